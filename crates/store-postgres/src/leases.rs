//! Leases in PostgreSQL (`batchwatch_store::ops::lease` has the states and the fence): the
//! `instances` table, the takeover of jobs nobody holds, and the fence every operation under a
//! lease passes first ([`fence`]), with the triggers of `migrations/postgres/0002_leases.sql`
//! checking each row it writes.

use std::time::Duration;

use batchwatch_store::ops::lease::{Instance, InstanceRow, Leases};
use sqlx::PgConnection;

use crate::{Lease, Store, StoreError};

/// A lease's time to live in whole milliseconds, as the queries take it.
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Checks, at the start of an operation's transaction, that `lease` still runs, and keeps its
/// instance's row from being reaped until the transaction ends (`FOR SHARE`); then names the
/// writer to the triggers for this transaction. A leader's write ([`Lease::as_leader`]) names
/// it the leader too when its term runs, and keeps the term from passing to another instance
/// until the transaction ends. [`Lease::SOLE`] (an operator's command) is not fenced.
pub(crate) async fn fence(conn: &mut PgConnection, lease: &Lease) -> Result<(), StoreError> {
    if lease.is_sole() {
        return Ok(());
    }
    let epoch = lease.epoch();
    // One round trip: the rows are found (and held for share) only while the lease and the
    // term run, and naming the writer is what selecting them does.
    let held = sqlx::query_scalar!(
        "SELECT set_config('batchwatch.epoch', $2, true)
             || set_config('batchwatch.leader',
                    CASE WHEN $3 AND EXISTS (SELECT 1 FROM leader l
                                             WHERE l.epoch = $1 AND l.expires_at > now()
                                             FOR SHARE)
                         THEN $2 ELSE '' END,
                    true)
         FROM instances WHERE epoch = $1 AND expires_at > now() FOR SHARE",
        epoch,
        epoch.to_string(),
        lease.is_leader(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    if held.is_none() {
        return Err(StoreError::NotHeld(format!(
            "the lease of epoch {epoch} ran out"
        )));
    }
    Ok(())
}

impl Leases for Store {
    async fn register(
        &self,
        who: &Instance,
        ttl: Duration,
        now: &str,
    ) -> Result<Lease, StoreError> {
        let epoch = sqlx::query_scalar!(
            "INSERT INTO instances (name, host, pid, pid_namespace, started_at, heartbeat_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $5, now() + $6 * interval '1 millisecond')
             RETURNING epoch",
            who.name,
            who.host,
            i64::from(who.pid),
            who.pid_namespace,
            now,
            millis(ttl) as f64,
        )
        .fetch_one(self.writer()?)
        .await?;
        Ok(Lease::of(epoch))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration, now: &str) -> Result<(), StoreError> {
        if lease.is_sole() {
            return Ok(());
        }
        // A lease that ran out is lost even before another instance reaped it: its jobs may be
        // taken at any moment, so it is never brought back.
        let renewed = sqlx::query!(
            "UPDATE instances SET heartbeat_at = $2, expires_at = now() + $3 * interval '1 millisecond'
             WHERE epoch = $1 AND expires_at > now()",
            lease.epoch(),
            now,
            millis(ttl) as f64,
        )
        .execute(self.writer()?)
        .await?
        .rows_affected();
        if renewed == 0 {
            return Err(StoreError::LeaseLost {
                epoch: lease.epoch(),
            });
        }
        Ok(())
    }

    async fn take_over(
        &self,
        lease: &Lease,
        limit: i64,
        now: &str,
    ) -> Result<Vec<String>, StoreError> {
        if lease.is_sole() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        // Reaping waits for the operations still running under a lease that ran out (they
        // hold its row for share): what they commit, they committed while it held. Not for
        // long: a stopped process's transaction ends when the server ends its session.
        sqlx::query!("SET LOCAL lock_timeout = '2s'")
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM instances WHERE expires_at < now()")
            .execute(&mut *tx)
            .await?;
        let held = sqlx::query_scalar!(
            "SELECT epoch FROM instances WHERE epoch = $1 AND expires_at > now() FOR SHARE",
            lease.epoch()
        )
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Err(StoreError::NotHeld(format!(
                "the lease of epoch {} ran out before the takeover",
                lease.epoch()
            )));
        }
        let taken = sqlx::query_scalar!(
            "UPDATE jobs SET owner_epoch = $1
             WHERE id IN (
                 SELECT j.id FROM jobs j
                 WHERE NOT j.terminal
                   AND (j.owner_epoch IS NULL
                        OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.epoch = j.owner_epoch))
                 ORDER BY j.id LIMIT $2
                 FOR UPDATE OF j SKIP LOCKED)
             RETURNING id",
            lease.epoch(),
            limit,
        )
        .fetch_all(&mut *tx)
        .await?;
        if !taken.is_empty() {
            // What the old holder had under way, it may have sent: the new holder reconciles
            // those uploads and creates first, as after a restart.
            sqlx::query!(
                "UPDATE batches SET outcome_unknown_at = coalesce(outcome_unknown_at, $2), updated_at = $2
                 WHERE state IN ('uploading', 'creating') AND job_id = ANY($1)",
                &taken,
                now,
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                "INSERT INTO job_events (job_id, at, state, message)
                 SELECT j.id, $2, j.state,
                        'taken over by ' || i.name || ' (lease epoch ' || i.epoch || ')'
                 FROM jobs j JOIN instances i ON i.epoch = j.owner_epoch
                 WHERE j.id = ANY($1)",
                &taken,
                now,
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(taken)
    }

    async fn elect(&self, lease: &Lease, term: Duration) -> Result<bool, StoreError> {
        if lease.is_sole() {
            return Ok(true);
        }
        // Only an instance whose lease runs is elected; the term it takes over must have run
        // out by the server's clock (or be its own, renewed).
        let leads = sqlx::query_scalar!(
            "INSERT INTO leader (id, epoch, elected_at, expires_at)
             SELECT 1, i.epoch, now(), now() + $2 * interval '1 millisecond'
             FROM instances i WHERE i.epoch = $1 AND i.expires_at > now()
             ON CONFLICT (id) DO UPDATE
                 SET epoch = excluded.epoch,
                     elected_at = CASE WHEN leader.epoch = excluded.epoch
                                       THEN leader.elected_at ELSE excluded.elected_at END,
                     expires_at = excluded.expires_at
                 WHERE leader.epoch = excluded.epoch OR leader.expires_at <= now()
             RETURNING epoch",
            lease.epoch(),
            millis(term) as f64,
        )
        .fetch_optional(self.writer()?)
        .await?;
        Ok(leads == Some(lease.epoch()))
    }

    async fn resign(&self, lease: &Lease) -> Result<(), StoreError> {
        if lease.is_sole() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        sqlx::query!("DELETE FROM leader WHERE epoch = $1", lease.epoch())
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM instances WHERE epoch = $1", lease.epoch())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        Ok(sqlx::query_as!(
            InstanceRow,
            r#"SELECT i.epoch, i.name, i.host, i.pid, i.pid_namespace, i.started_at, i.heartbeat_at,
                      i.expires_at > now() AS "live!",
                      (SELECT count(*) FROM jobs j WHERE j.owner_epoch = i.epoch AND NOT j.terminal)
                          AS "jobs!",
                      EXISTS (SELECT 1 FROM leader l WHERE l.epoch = i.epoch AND l.expires_at > now())
                          AS "leader!"
               FROM instances i ORDER BY i.epoch"#
        )
        .fetch_all(&self.read)
        .await?)
    }
}
