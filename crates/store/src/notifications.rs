//! Notifications: who is told of a job's end (or of a batch stuck), and how each delivery went.
//!
//! ```text
//!   pending ──delivered (2xx, exit 0)──▶ delivered
//!    │  ▲
//!    │  └── the try failed: attempts + 1, tried again from next_attempt_at
//!    └──── tried until give_up_at, then ──▶ abandoned
//! ```
//!
//! A row is written in the transaction that ends the job (or, for a stuck batch, when the
//! daemon first sees it stuck), before anything is sent, and is tried until its target takes
//! it: a crash anywhere loses none, and a repeat carries the same `webhook_id`, by which a
//! receiver drops what it already has. `(target, key)` is unique: one notification per
//! target for a job's end, one per stuck episode.

use serde::Serialize;

/// A row of `notifications`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub id: i64,
    pub job_id: String,
    /// The `[[notify]]` entry, by name.
    pub target: String,
    /// What it tells of: `completed`, …, `rejected`, `stuck`.
    pub event: String,
    /// What makes it one of a kind for its target: the job's end, or one stuck episode.
    pub key: String,
    /// `webhook-id`: the same on every try.
    pub webhook_id: String,
    /// The event, JSON.
    #[serde(serialize_with = "crate::json_text")]
    pub payload: String,
    /// `pending`, `delivered` or `abandoned`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: String,
    pub give_up_at: String,
    /// How the last try went: `HTTP 503`, `exit status 3`, `timed out after 10s`, …
    pub last_outcome: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub done_at: Option<String>,
}

/// A notification to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification<'a> {
    pub target: &'a str,
    pub event: &'a str,
    pub key: &'a str,
    pub webhook_id: &'a str,
    pub payload: &'a str,
    pub give_up_at: &'a str,
}

/// How one try at delivering a notification ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Tried {
    /// Its target took it.
    Delivered { outcome: String },
    /// It failed; tried again from `retry_at`.
    Failed { outcome: String, retry_at: String },
    /// It failed, and its time to be tried again is over (or its target is gone from the
    /// configuration).
    Abandoned { outcome: String },
}

impl Tried {
    pub fn state(&self) -> &'static str {
        match self {
            Tried::Delivered { .. } => "delivered",
            Tried::Failed { .. } => "pending",
            Tried::Abandoned { .. } => "abandoned",
        }
    }

    pub fn outcome(&self) -> &str {
        match self {
            Tried::Delivered { outcome }
            | Tried::Failed { outcome, .. }
            | Tried::Abandoned { outcome } => outcome,
        }
    }
}

/// The notifications not yet delivered: how many, and when the oldest was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Undelivered {
    pub count: i64,
    pub oldest: Option<String>,
}
