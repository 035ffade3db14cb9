//! A batch's usage as the store books it when the batch is observed; the arithmetic is
//! [`batchwatch_core::usage`]'s.

use crate::api::Batch;
pub use batchwatch_core::usage::{Tokens, cost};

/// The tokens of a batch object, when it reports its usage.
pub fn tokens_of(batch: &Batch) -> Option<Tokens> {
    let u = batch.usage.as_ref()?;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Some(Tokens {
        input: n(u.input_tokens),
        cached: n(u.input_tokens_details.map_or(0, |d| d.cached_tokens)),
        output: n(u.output_tokens),
        reasoning: n(u.output_tokens_details.map_or(0, |d| d.reasoning_tokens)),
    })
}
