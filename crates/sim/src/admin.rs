//! The admin API under `/admin/` (routes listed in the [crate docs](crate)), and the
//! operations it shares with [`SimHandle`](crate::SimHandle). Faults never apply here and no key is
//! asked for: it is a test and operator tool on a local port.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ApiError, PathId};
use crate::lifecycle::no_such_batch;
use crate::model::clock::{ms, secs};
use crate::model::{Api, BatchStats, Faults, ScriptedFault, Stats};
use crate::state::Shared;
use batchwatch_core::model::BatchStatus;

/// What `GET /admin/counts` reports: requests per route and batches per status, without the
/// histories that make [`Stats`] large for a big fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// The simulated clock, in unix milliseconds.
    pub now_ms: i64,
    /// Requests received per `METHOD /route/{template}` (faulted ones included).
    pub requests: BTreeMap<String, u64>,
    /// Batches per status; vanished ones count as `vanished`.
    pub batches: BTreeMap<String, u64>,
    /// How many of them the simulated other tool created.
    pub foreign: u64,
}

/// Which batches `POST /admin/batches/step` moves on: `{"ids": [...]}`, or `{"count": K}`
/// for K picked at random among the clients' batches in `in_progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Step {
    Ids { ids: Vec<String> },
    Count { count: usize },
}

/// One batch `POST /admin/batches/step` was asked to move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stepped {
    pub id: String,
    /// Whether it moved (only `in_progress`, `finalizing` and `cancelling` batches do).
    pub moved: bool,
    /// Its status now.
    pub status: String,
    /// The simulated instant of the step, unix milliseconds.
    pub at_ms: i64,
}

/// What `GET /admin/observations` reports: how often each batch was sent to a client (in a
/// retrieve, a list page, or a create or cancel answer) since `since_ms`, and the longest
/// stretch it went unseen. Times are simulated unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    /// When counting began: the start, or the last `POST /admin/observations/reset`.
    pub since_ms: i64,
    pub now_ms: i64,
    /// Every batch, oldest first.
    pub batches: Vec<BatchObservation>,
}

/// One batch in [`Observations`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchObservation {
    pub id: String,
    pub status: String,
    pub foreign: bool,
    pub vanished: bool,
    pub created_ms: i64,
    /// Times it was sent to a client since `since_ms`.
    pub count: u64,
    /// When it was last sent (its creation when never).
    pub last_ms: i64,
    /// The longest gap between two sendings (creation counts as one) that ended after
    /// `since_ms` or is still open now; a gap that began before `since_ms` counts whole.
    pub max_gap_ms: i64,
}

/// One file in `GET /admin/files`: every file the simulator holds, uploaded or generated,
/// whoever made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldFile {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    /// Simulated unix seconds.
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

impl Shared {
    /// Every file held, oldest first.
    pub(crate) fn files(&self) -> Vec<HeldFile> {
        self.lock()
            .files
            .iter()
            .map(|f| HeldFile {
                id: f.id.clone(),
                filename: f.filename.clone(),
                purpose: f.purpose.clone(),
                created_at: secs(f.created_at),
                expires_at: f.expires_at.map(secs),
            })
            .collect()
    }

    /// Accepts only `key` from now on (any non-empty key when `None`).
    pub(crate) fn set_api_key(&self, key: Option<SecretString>) {
        *self.api_keys.lock().unwrap_or_else(|e| e.into_inner()) = key.map(|k| vec![k]);
    }

    /// Accepts `key` as well: another key of the same organisation. Returns whether any key
    /// is accepted (then there is nothing to add).
    pub(crate) fn add_api_key(&self, key: SecretString) -> bool {
        match &mut *self.api_keys.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(keys) => {
                keys.push(key);
                false
            }
            None => true,
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let state = self.lock();
        let mut batches_by_job = BTreeMap::new();
        for batch in &state.batches {
            if let Some(job) = batch.job_id() {
                *batches_by_job.entry(job.to_owned()).or_default() += 1;
            }
        }
        Stats {
            now: secs(state.clock.now()),
            batches_by_job,
            requests: state.stats.requests().clone(),
            faults_injected: state.stats.faults().clone(),
            batches: state
                .batches
                .iter()
                .map(|b| BatchStats {
                    id: b.id.clone(),
                    status: b.status.as_str().to_owned(),
                    job_id: b.job_id().map(str::to_owned),
                    foreign: b.foreign,
                    vanished: b.vanished,
                    history: b.history.clone(),
                })
                .collect(),
        }
    }

    pub(crate) fn faults(&self) -> Faults {
        self.lock().faults.faults.clone()
    }

    /// Replaces the standing faults, if they are valid.
    pub(crate) fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        self.lock().faults.faults = faults;
        Ok(())
    }

    pub(crate) fn script(&self) -> Vec<ScriptedFault> {
        self.lock().faults.script.iter().cloned().collect()
    }

    pub(crate) fn push_script(&self, entries: Vec<ScriptedFault>) {
        self.lock().faults.script.extend(entries);
    }

    pub(crate) fn clear_script(&self) {
        self.lock().faults.script.clear();
    }

    /// Jumps simulated time ahead, then moves every batch along.
    pub(crate) fn advance(&self, secs: f64) {
        let mut state = self.lock();
        state.clock.advance(ms(secs.max(0.0)));
        state.advance();
        self.wake.notify_one();
    }

    pub(crate) fn set_time_scale(&self, scale: f64) -> Result<(), String> {
        if !(scale >= 0.0 && scale.is_finite()) {
            return Err(format!(
                "time_scale must be a non-negative number, not {scale}"
            ));
        }
        self.lock().clock.set_scale(scale);
        self.wake.notify_one();
        Ok(())
    }

    pub(crate) fn counts(&self) -> Counts {
        let state = self.lock();
        let mut batches = BTreeMap::new();
        let mut foreign = 0;
        for batch in &state.batches {
            let status = if batch.vanished {
                "vanished"
            } else {
                batch.status.as_str()
            };
            *batches.entry(status.to_owned()).or_default() += 1;
            foreign += u64::from(batch.foreign);
        }
        Counts {
            now_ms: state.clock.now(),
            requests: state.stats.requests().clone(),
            batches,
            foreign,
        }
    }

    pub(crate) fn step(&self, step: Step) -> Result<Vec<Stepped>, ApiError> {
        let mut state = self.lock();
        let chosen: Vec<usize> = match step {
            Step::Ids { ids } => ids
                .iter()
                .map(|id| {
                    state
                        .batch_index
                        .get(id)
                        .copied()
                        .ok_or_else(|| no_such_batch(Api::OpenAi, id))
                })
                .collect::<Result<_, _>>()?,
            Step::Count { count } => {
                let mut candidates: Vec<usize> = state
                    .batches
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| {
                        !b.foreign && !b.vanished && b.status == BatchStatus::InProgress
                    })
                    .map(|(i, _)| i)
                    .collect();
                // Its own generator, so that stepping leaves the ids and outcomes of the rest
                // of the run alone.
                let mut rng =
                    fastrand::Rng::with_seed(state.seed() ^ state.clock.now().unsigned_abs());
                rng.shuffle(&mut candidates);
                candidates.truncate(count);
                candidates.sort_unstable();
                candidates
            }
        };
        let at_ms = state.clock.now();
        Ok(chosen
            .into_iter()
            .map(|i| {
                let moved = state.step(i);
                let batch = &state.batches[i];
                if moved {
                    tracing::info!(batch = %batch.id, status = %batch.status, "batch stepped");
                }
                Stepped {
                    id: batch.id.clone(),
                    moved,
                    status: batch.status.as_str().to_owned(),
                    at_ms,
                }
            })
            .collect())
    }

    pub(crate) fn observations(&self) -> Observations {
        let state = self.lock();
        let now = state.clock.now();
        Observations {
            since_ms: state.observed_since,
            now_ms: now,
            batches: state
                .batches
                .iter()
                .map(|b| BatchObservation {
                    id: b.id.clone(),
                    status: b.status.as_str().to_owned(),
                    foreign: b.foreign,
                    vanished: b.vanished,
                    created_ms: b.created_at,
                    count: b.served.count,
                    last_ms: b.served.last_ms,
                    max_gap_ms: b.served.max_gap_until(now),
                })
                .collect(),
        }
    }

    /// Starts counting afresh; returns the instant counting starts from.
    pub(crate) fn reset_observations(&self) -> i64 {
        let mut state = self.lock();
        let now = state.clock.now();
        state.observed_since = now;
        for batch in &mut state.batches {
            batch.served.count = 0;
            batch.served.max_gap_ms = 0;
        }
        now
    }

    pub(crate) fn vanish(&self, batch_id: &str) -> bool {
        self.lock().vanish(batch_id)
    }

    pub(crate) fn reset(&self) {
        self.lock().reset();
    }

    fn clock(&self) -> Value {
        let state = self.lock();
        json!({
            "now": secs(state.clock.now()),
            "time_scale": state.clock.scale(),
        })
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
}

/// The admin routes.
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/admin/stats", get(stats))
        .route(
            "/admin/faults",
            get(get_faults).put(put_faults).patch(patch_faults),
        )
        .route(
            "/admin/faults/script",
            get(get_script).post(post_script).delete(delete_script),
        )
        .route("/admin/counts", get(counts))
        .route("/admin/batches/step", post(step))
        .route("/admin/observations", get(observations))
        .route("/admin/observations/reset", post(reset_observations))
        .route("/admin/batches/{batch_id}/vanish", post(vanish))
        .route("/admin/clock", get(get_clock).post(post_clock))
        .route("/admin/reset", post(reset))
        .route("/admin/files", get(files))
        .route("/admin/key", axum::routing::put(put_key))
        .route("/admin/keys", post(add_key))
}

async fn files(State(shared): State<Arc<Shared>>) -> Json<Vec<HeldFile>> {
    Json(shared.files())
}

/// `{"key": "sk-..."}` accepts only that key from now on; `{"key": null}` any non-empty key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyChange {
    key: Option<String>,
}

async fn put_key(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let change: KeyChange = parse(&body)?;
    if change.key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err(bad("the key must not be empty; null accepts any key"));
    }
    let any = change.key.is_none();
    shared.set_api_key(change.key.map(SecretString::from));
    Ok(Json(json!({"any_key": any})))
}

/// `{"key": "sk-..."}` accepts that key as well as those accepted already.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAdded {
    key: String,
}

async fn add_key(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let added: KeyAdded = parse(&body)?;
    if added.key.trim().is_empty() {
        return Err(bad("the key must not be empty"));
    }
    let any = shared.add_api_key(SecretString::from(added.key));
    Ok(Json(json!({"any_key": any})))
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(shared.stats())
}

async fn counts(State(shared): State<Arc<Shared>>) -> Json<Counts> {
    Json(shared.counts())
}

async fn step(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let step: Step = parse(&body)?;
    Ok(Json(json!({"stepped": shared.step(step)?})))
}

async fn observations(State(shared): State<Arc<Shared>>) -> Json<Observations> {
    Json(shared.observations())
}

async fn reset_observations(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({"since_ms": shared.reset_observations()}))
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Json<Faults> {
    Json(shared.faults())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

async fn put_faults(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<Json<Faults>, ApiError> {
    let faults: Faults = parse(&body)?;
    shared.set_faults(faults).map_err(bad)?;
    Ok(Json(shared.faults()))
}

/// Sets only the fields given; the rest stay as they are.
async fn patch_faults(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<Json<Faults>, ApiError> {
    let patch: serde_json::Map<String, Value> = parse(&body)?;
    let mut current = match serde_json::to_value(shared.faults()) {
        Ok(Value::Object(map)) => map,
        _ => return Err(ApiError::internal("the faults could not be serialised")),
    };
    current.extend(patch);
    let faults: Faults = serde_json::from_value(Value::Object(current))
        .map_err(|e| bad(format!("invalid faults: {e}")))?;
    shared.set_faults(faults).map_err(bad)?;
    Ok(Json(shared.faults()))
}

async fn get_script(State(shared): State<Arc<Shared>>) -> Json<Vec<ScriptedFault>> {
    Json(shared.script())
}

/// One entry or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<ScriptedFault>),
    One(ScriptedFault),
}

async fn post_script(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<Json<Vec<ScriptedFault>>, ApiError> {
    let entries = match parse(&body)? {
        OneOrMany::Many(entries) => entries,
        OneOrMany::One(entry) => vec![entry],
    };
    shared.push_script(entries);
    Ok(Json(shared.script()))
}

async fn delete_script(State(shared): State<Arc<Shared>>) -> Json<Vec<ScriptedFault>> {
    shared.clear_script();
    Json(Vec::new())
}

async fn vanish(
    State(shared): State<Arc<Shared>>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    if shared.vanish(&id) {
        Ok(Json(json!({"id": id, "vanished": true})))
    } else {
        Err(no_such_batch(Api::OpenAi, &id))
    }
}

async fn get_clock(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.clock())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockChange {
    #[serde(default)]
    advance_secs: Option<f64>,
    #[serde(default)]
    time_scale: Option<f64>,
}

async fn post_clock(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let change: ClockChange = parse(&body)?;
    if let Some(scale) = change.time_scale {
        shared.set_time_scale(scale).map_err(bad)?;
    }
    if let Some(secs) = change.advance_secs {
        shared.advance(secs);
    }
    Ok(Json(shared.clock()))
}

async fn reset(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.reset();
    Json(json!({"reset": true}))
}
