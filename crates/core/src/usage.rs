//! Token usage and estimated cost of batches.
//!
//! The batch object's `usage` is stored per batch at every observation (`batch_usage`), and the
//! cost is booked once, at the first observation that shows the batch ended: one guarded write
//! (`booked_at IS NULL`) in the same transaction that records the final status, so neither a
//! restart nor a batch seen ended again can book it twice. The cost is an estimate from the
//! configuration's `[pricing]` for the job's model at that moment:
//!
//! ```text
//! cost = ((input - cached) * price.input + cached * price.cached_input + output * price.output)
//!        / 1,000,000 * (1 - price.batch_discount)
//! ```
//!
//! Reasoning tokens are output tokens (they are billed as such), so they are not added again.
//!
//! A service that reports usage per request in the results rather than on the batch
//! (Anthropic's Message Batches) has its batch's end booked without tokens; the tokens counted
//! from the downloaded results, and their cost at `[pricing]` per model, replace that booking
//! in the transaction that records the results collected.

use crate::config::ModelPrice;

/// A batch's tokens, as its `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tokens {
    /// All input tokens, cached ones included.
    pub input: i64,
    pub cached: i64,
    /// All output tokens, reasoning ones included.
    pub output: i64,
    pub reasoning: i64,
}

impl std::ops::AddAssign for Tokens {
    fn add_assign(&mut self, other: Tokens) {
        self.input += other.input;
        self.cached += other.cached;
        self.output += other.output;
        self.reasoning += other.reasoning;
    }
}

/// The estimated cost in US dollars of `tokens` at `price`.
pub fn cost(price: &ModelPrice, tokens: &Tokens) -> f64 {
    let cached = tokens.cached.clamp(0, tokens.input.max(0)) as f64;
    let uncached = tokens.input.max(0) as f64 - cached;
    let list = uncached * price.input
        + cached * price.cached_input.unwrap_or(price.input)
        + tokens.output.max(0) as f64 * price.output;
    list / 1_000_000.0 * (1.0 - price.batch_discount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(discount: f64) -> ModelPrice {
        ModelPrice {
            input: 2.0,
            cached_input: Some(0.5),
            output: 8.0,
            batch_discount: discount,
        }
    }

    #[test]
    fn cached_input_has_its_own_price_and_reasoning_is_not_counted_twice() {
        let t = Tokens {
            input: 1_000_000,
            cached: 400_000,
            output: 250_000,
            reasoning: 100_000,
        };
        // 600k uncached at $2, 400k cached at $0.50, 250k out at $8: 1.2 + 0.2 + 2.0 = 3.4.
        assert!((cost(&price(0.0), &t) - 3.4).abs() < 1e-12);
        assert!((cost(&price(0.5), &t) - 1.7).abs() < 1e-12);
    }

    #[test]
    fn without_a_cached_price_cached_input_costs_the_input_price() {
        let p = ModelPrice {
            cached_input: None,
            ..price(0.0)
        };
        let t = Tokens {
            input: 1_000_000,
            cached: 1_000_000,
            output: 0,
            reasoning: 0,
        };
        assert!((cost(&p, &t) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn more_cached_than_input_tokens_is_held_to_the_input() {
        let t = Tokens {
            input: 100,
            cached: 500,
            output: 0,
            reasoning: 0,
        };
        assert!((cost(&price(0.0), &t) - 100.0 * 0.5 / 1e6).abs() < 1e-15);
    }
}
