//! Tokens and estimated cost, per batch, job and model.

use serde::Serialize;

/// A row of `batch_usage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchUsage {
    pub batch_id: i64,
    pub input_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub cost_usd: Option<f64>,
    pub booked_at: Option<String>,
}

/// A row of `job_costs`: a job's tokens and estimated cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobCost {
    pub job_id: String,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_usd: Option<f64>,
}

/// A row of `model_costs`: a model's tokens and estimated cost so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCost {
    pub model: String,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    /// `None` when no batch of the model has a price.
    pub cost_usd: Option<f64>,
}
