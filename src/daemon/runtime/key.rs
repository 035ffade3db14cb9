//! The API key and the service's routes, checked at start and probed while the gate is closed
//! for them ([`crate::daemon::gate`]).

use crate::daemon::ctx::Ctx;
use crate::doctor::Outcome;

/// Reads the key again from its source (it may have been rotated), then tries it with the
/// cheapest call there is; reopens the gate when it works.
pub async fn probe(ctx: Ctx) -> anyhow::Result<()> {
    match ctx.client.reload_key(&ctx.settings.api.key_source()) {
        Ok(changed) => {
            if changed {
                tracing::warn!(source = %ctx.settings.api.key_source(), "the API key changed at its source; trying the new one");
            }
            ctx.gate.key_reread(changed, ctx.clock.now());
        }
        Err(e) => {
            tracing::error!(error = %e, "the API key cannot be read again from its source; trying the one in use");
            ctx.gate.key_reread(false, ctx.clock.now());
        }
    }
    match ctx.client.check_routes().await {
        Ok(()) => {
            ctx.gate.reopen();
            Ok(())
        }
        Err(e) => {
            let now = ctx.clock.now();
            if !ctx
                .gate
                .note(&e, now, ctx.settings.backoff.auth_retry.get())
            {
                // Not a refusal (the network, say): the key may be fine; try the work again.
                ctx.gate.reopen();
            } else if ctx.gate.route_hint_due() {
                hint_base_url(&ctx).await;
            }
            Err(e.into())
        }
    }
}

/// What `doctor` asks the service, asked at start and logged, one line a check: a refused key
/// or a missing route closes the gate before the first file arrives (and `/readyz` says so).
pub async fn check_at_start(ctx: Ctx) -> anyhow::Result<()> {
    let (checks, error) = crate::doctor::online(&ctx.settings.api.base_url, &ctx.client).await;
    for c in &checks {
        match c.outcome {
            Outcome::Pass => tracing::info!(check = c.check, "start-up check passed: {}", c.detail),
            Outcome::Skip => {
                tracing::warn!(check = c.check, "start-up check skipped: {}", c.detail)
            }
            Outcome::Fail => {
                tracing::error!(check = c.check, "start-up check failed: {}", c.detail)
            }
        }
    }
    if let Some(e) = error {
        ctx.gate
            .note(&e, ctx.clock.now(), ctx.settings.backoff.auth_retry.get());
        // The checks' lines said what to set api.base_url to: no second hint.
        ctx.gate.route_explained();
    }
    Ok(())
}

/// Says in the log which setting is wrong when a route is missing, and whether the API answers
/// with `/v1` added to `api.base_url`.
async fn hint_base_url(ctx: &Ctx) {
    let base_url = &ctx.settings.api.base_url;
    match ctx.client.answers_with_version_path().await {
        Some(fixed) => tracing::error!(
            api.base_url = %base_url,
            answers = %fixed,
            "api.base_url has no Batch API routes, and the API answers at {fixed}: set api.base_url = \"{fixed}\" and reload"
        ),
        None => tracing::error!(
            api.base_url = %base_url,
            "api.base_url has no Batch API routes (nor with /v1 added): set it to the API root, version path included (https://api.openai.com/v1), and reload"
        ),
    }
}
