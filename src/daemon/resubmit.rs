//! Resubmitting expired jobs automatically (`batch.resubmit_expired = N`): a job that ends
//! expired, fewer than N resubmissions down its chain, is marked in the transaction that ends
//! it (`jobs.resubmit_due`); this room writes the file of its undone requests into incoming/
//! ([`crate::housekeeping::resubmit::write`], repeatable) and clears the mark.

use anyhow::Context;

use crate::housekeeping::resubmit::{Only, write};
use crate::store::{chain, jobs};

use super::ctx::Ctx;

/// Whether a resubmission is due.
pub async fn due(ctx: &Ctx) -> anyhow::Result<bool> {
    Ok(!chain::resubmit_due(ctx.store.reader()).await?.is_empty())
}

/// Writes every due resubmission.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    for (id, only) in chain::resubmit_due(ctx.store.reader()).await? {
        let job = jobs::get(ctx.store.reader(), &id)
            .await?
            .context("a job to resubmit vanished")?;
        let only = Only::parse(&only).unwrap_or(Only::Expired);
        let now = ctx.now();
        let mut tx = ctx.store.begin().await?;
        let generation = chain::depth(&mut tx, &id).await? + 1;
        let message = match write(&ctx.queue, &job, only, generation, true) {
            Ok(Some(w)) => {
                tracing::info!(job = %id, file = %w.file, requests = w.requests, "undone requests resubmitted");
                format!(
                    "its {} {} requests resubmitted as {} (batch.resubmit_expired)",
                    w.requests, w.only, w.file
                )
            }
            Ok(None) => "no request was left undone; nothing to resubmit".to_owned(),
            Err(e) => {
                tracing::error!(job = %id, error = format!("{e:#}"), "the undone requests could not be resubmitted");
                format!("the undone requests could not be resubmitted: {e:#}")
            }
        };
        chain::set_resubmit_due(&mut tx, &id, None).await?;
        jobs::add_event(&mut tx, &id, job.state, &message, &now).await?;
        tx.commit().await?;
    }
    Ok(())
}
