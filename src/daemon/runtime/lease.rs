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

/// This process, as it registers: `name` (else HOST-PID), its host, its pid and where that
/// pid means it.
pub fn this_process(name: Option<&str>) -> Instance {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned());
    let host = read("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".to_owned());
    let pid = std::process::id();
    // Unreadable (no /proc): a value of this process's own, which no other instance shares,
    // so no other's lease is ever ended by its pid.
    let boot = read("/proc/sys/kernel/random/boot_id").unwrap_or_else(|_| format!("unknown-{pid}"));
    let space = std::fs::read_link("/proc/self/ns/pid")
        .map(|link| link.display().to_string())
        .unwrap_or_else(|_| format!("unknown-{pid}"));
    Instance {
        name: name.map_or_else(|| format!("{host}-{pid}"), str::to_owned),
        host,
        pid,
        pid_namespace: format!("{boot} {space}"),
    }
}

/// Whether a process `pid` runs in this pid namespace (it may be another user's).
fn runs(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Registers this daemon as `name` (else HOST-PID), ends the leases of earlier runs on this
/// host (in its pid namespace) that are gone (a restart after a crash need not wait for them to run out), takes over
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
        // Only a process in the same pid namespace of the same boot can tell by the pid that
        // another is gone (the pid it had is this one's, or nobody's).
        let gone = earlier.pid_namespace.as_deref() == Some(me.pid_namespace.as_str())
            && (earlier.pid == i64::from(me.pid) || !runs(earlier.pid));
        if gone {
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
/// fails is tried again at the next. The lease is lost when the database says so, or when no
/// renewal was confirmed for its time to live by this process's own clock (the database did
/// not answer: the host is cut off from it, or it is down), since by then the database may
/// have let another instance take the jobs over. A renewal is waited for only as long as the
/// lease stands, an election for a term, so a connection that hangs cannot keep either from
/// being decided. The lease found lost is said, the tenure learns it (the daemon stops), and
/// the task ends.
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
    let lost = |why: &dyn std::fmt::Display| {
        tracing::error!(
            "the lease is lost ({why}): this daemon stops, dropping everything it had under way"
        );
        tenure.lose();
    };
    loop {
        tokio::time::sleep(terms.elect_every).await;
        if renewed.elapsed() >= terms.renew_every {
            let sent = Instant::now();
            let left = tenure.left().unwrap_or(Duration::MAX);
            let now = clock::format(clock.now());
            let renewal = store.renew(&lease, terms.ttl, &now);
            match tokio::time::timeout(left, renewal).await {
                Ok(Ok(())) => {
                    tenure.renewed(sent, terms.ttl);
                    renewed = sent;
                }
                Ok(Err(e @ StoreError::LeaseLost { .. })) => return lost(&e),
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::telemetry::chain(&e), "the lease could not be renewed; trying again")
                }
                Err(_) => {}
            }
        }
        if tenure.left() == Some(Duration::ZERO) {
            return lost(&format_args!(
                "no renewal was confirmed within database.lease ({}): the database did not \
                 answer, and another instance may hold its jobs now",
                clock::humanize(terms.ttl)
            ));
        }
        if tokio::time::timeout(terms.term, stand(&store, &lease, &tenure, terms))
            .await
            .is_err()
        {
            tracing::warn!(
                "the database did not answer the election within a term; standing again"
            );
        }
    }
}
