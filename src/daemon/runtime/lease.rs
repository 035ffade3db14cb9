//! The daemon's lease on a shared store, and its term as leader (`batchwatch_store::ops::lease`
//! has the states): it registers as a new instance at its start, ends the leases of earlier
//! runs on this host that are gone, renews its lease and stands for leader while it runs
//! ([`keep`]), and ends both at a clean stop. What it learns it keeps in the [`Tenure`] the
//! tasks read: whether it leads, and whether a request may start.
//!
//! A lease found lost (the instance was paused or cut off for longer than `database.lease`,
//! and another instance may have taken its jobs over) stops the daemon: everything it had
//! under way was under that lease, so it drops it all, and its service manager starts it again
//! as a new instance. A SQLite store has one lease, `Lease::SOLE`, and one daemon, which leads;
//! nothing here does anything to it.

use std::time::{Duration, Instant};

use crate::clock::{self, Clock};
use crate::daemon::shared::Tenure;
use crate::store::ops::lease::Instance;
use crate::store::prelude::*;
use crate::store::{Lease, Store, StoreError};

/// The lengths derived from `database.lease`.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    /// How long the lease runs from its last renewal.
    pub ttl: Duration,
    /// How often it is renewed: three times within its time to live, so one renewal lost to a
    /// slow database costs nothing.
    pub renew_every: Duration,
    /// A leader's term: a quarter of the lease, so a leader that is gone is replaced sooner
    /// than its jobs are taken over (the sweep keeps every batch tracked meanwhile).
    pub term: Duration,
    /// How often an instance stands for leader (the leader renews its term): three times a
    /// term.
    pub elect_every: Duration,
}

impl Terms {
    pub fn of(lease: Duration) -> Terms {
        Terms {
            ttl: lease,
            renew_every: lease / 3,
            term: lease / 4,
            elect_every: lease / 12,
        }
    }
}

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

/// Whether a process `pid` runs on this host (it may be another user's).
fn runs(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Registers this daemon as `name` (else HOST-PID), ends the leases of earlier runs on this
/// host that are gone (a restart after a crash need not wait for them to run out), takes over
/// every unfinished job nobody holds (or leaves that to the loop when it cannot yet), and
/// stands for leader: the daemon's lease and what it knows of it. A name that another running
/// daemon holds is refused (its own lease ended).
pub async fn begin(
    store: &Store,
    clock: &Clock,
    terms: Terms,
    name: Option<&str>,
) -> anyhow::Result<(Lease, Tenure)> {
    let now = clock::format(clock.now());
    let me = this_process(name);
    let registered = Instant::now();
    let lease = store.register(&me, terms.ttl, &now).await?;
    if lease.is_sole() {
        return Ok((lease, Tenure::sole()));
    }
    let tenure = Tenure::shared(registered, terms.ttl);
    for earlier in store.instances().await? {
        if earlier.epoch == lease.epoch() || !earlier.live {
            continue;
        }
        let gone = earlier.pid == i64::from(me.pid) || !runs(earlier.pid);
        if earlier.host == me.host && gone {
            store.resign(&Lease::of(earlier.epoch)).await?;
            tracing::info!(
                instance = %earlier.name,
                epoch = earlier.epoch,
                "ended the lease of an earlier run on this host"
            );
        } else if earlier.name == me.name {
            store.resign(&lease).await?;
            anyhow::bail!(
                "daemon.name {:?} is taken by a running daemon on host {} (pid {}, epoch {}, \
                 last heard of at {}): each daemon on a database needs a name of its own; one \
                 that stopped without a goodbye frees its name within database.lease",
                me.name,
                earlier.host,
                earlier.pid,
                earlier.epoch,
                earlier.heartbeat_at,
            );
        }
    }
    // A takeover that fails (a lock held by a stopped instance's transaction until the server
    // ends its session) is tried again at the loop's first round and each takeover period
    // after, as any other: not a reason to stop at the start.
    let taken = match store.take_over(&lease, i64::MAX, &now).await {
        Ok(taken) => taken.len(),
        Err(e) => {
            tracing::warn!(error = %crate::telemetry::chain(&e), "cannot take over the jobs of instances whose lease ran out yet; trying again later");
            0
        }
    };
    stand(store, &lease, &tenure, terms).await;
    tracing::info!(
        instance = %me.name,
        epoch = lease.epoch(),
        jobs_taken_over = taken,
        leader = tenure.leads(),
        "registered on the shared database"
    );
    Ok((lease, tenure))
}

/// Stands for leader (or renews the term), and says when that changes who leads.
async fn stand(store: &Store, lease: &Lease, tenure: &Tenure, terms: Terms) {
    let led = tenure.leads();
    let sent = Instant::now();
    match store.elect(lease, terms.term).await {
        Ok(leads) => {
            tenure.elected(sent, leads.then_some(terms.term));
            if leads && !led {
                tracing::info!(
                    epoch = lease.epoch(),
                    "this instance leads now: it tracks the batches and keeps house"
                );
            } else if !leads && led {
                tracing::warn!(epoch = lease.epoch(), "another instance leads now");
            }
        }
        // The term runs out by itself: the tenure stops leading before the database lets
        // another instance be elected.
        Err(e) => {
            tracing::warn!(error = %crate::telemetry::chain(&e), "cannot stand for leader; trying again")
        }
    }
}

/// Renews `lease` every [`Terms::renew_every`] and stands for leader every
/// [`Terms::elect_every`] until the task is aborted or the lease is found lost. A renewal that
/// fails is tried again at the next; a lease found lost is said, the tenure learns it (the
/// daemon stops), and the task ends.
pub async fn keep(
    store: Store,
    lease: Lease,
    tenure: std::sync::Arc<Tenure>,
    clock: Clock,
    terms: Terms,
) {
    if lease.is_sole() {
        return;
    }
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(terms.elect_every).await;
        if renewed.elapsed() >= terms.renew_every {
            let sent = Instant::now();
            match store
                .renew(&lease, terms.ttl, &clock::format(clock.now()))
                .await
            {
                Ok(()) => {
                    tenure.renewed(sent, terms.ttl);
                    renewed = sent;
                }
                Err(e @ StoreError::LeaseLost { .. }) => {
                    tracing::error!(error = %e, "the lease is lost: this daemon stops, dropping everything it had under way");
                    tenure.lose();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::chain(&e), "the lease could not be renewed; trying again")
                }
            }
        }
        stand(&store, &lease, &tenure, terms).await;
    }
}
