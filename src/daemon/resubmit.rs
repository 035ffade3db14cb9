//! Resubmitting expired jobs automatically (`batch.resubmit_expired = N`): a job that ends
//! expired, fewer than N resubmissions down its chain, is marked in the transaction that ends
//! it (`jobs.resubmit_due`); this module resubmits its undone requests
//! ([`crate::housekeeping::resubmit::resubmit`], which clears the mark in the transaction that
//! records the new file) or, when there is nothing to write or the chain forbids it, clears
//! the mark with an event that says why.

use crate::housekeeping::resubmit::{Ask, Only, Origin, Outcome, counts, resubmit};
use crate::store::chain;

use super::ctx::Ctx;

/// Whether a resubmission is due.
pub async fn due(ctx: &Ctx) -> anyhow::Result<bool> {
    Ok(!chain::resubmit_due(ctx.store.reader()).await?.is_empty())
}

/// Carries out every due resubmission.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    for (id, only) in chain::resubmit_due(ctx.store.reader()).await? {
        let ask = Ask {
            only: Only::parse(&only).unwrap_or(Only::Expired),
            force: false,
            origin: Origin::Daemon,
        };
        let message = match resubmit(&ctx.store, &ctx.lease, &ctx.queue, &id, ask, &ctx.now()).await
        {
            Ok(Outcome::Written(w)) => {
                tracing::info!(job = %id, file = %w.file, requests = w.requests, "undone requests resubmitted");
                continue;
            }
            Ok(Outcome::Nothing { left_out }) if left_out.is_empty() => {
                "no request was left undone; nothing to resubmit".to_owned()
            }
            Ok(Outcome::Nothing { left_out }) => format!(
                "no request is left undone in its chain (already done: {}); nothing to resubmit",
                counts(&left_out)
            ),
            Ok(Outcome::Refused(refusal)) => {
                tracing::warn!(job = %id, reason = %refusal, "the undone requests were not resubmitted");
                format!("not resubmitted (batch.resubmit_expired): {refusal}")
            }
            Err(e) => {
                tracing::error!(job = %id, error = format!("{e:#}"), "the undone requests could not be resubmitted");
                format!("the undone requests could not be resubmitted: {e:#}")
            }
        };
        ctx.store
            .resubmit_done(&ctx.lease, &id, &message, &ctx.now())
            .await?;
    }
    Ok(())
}
