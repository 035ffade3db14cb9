//! The admin API under `/admin/` (routes listed in the module docs of [`crate::sim`]), and the
//! operations it shares with [`super::SimHandle`]. Faults never apply here and no key is
//! asked for: it is a test and operator tool on a local port.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Stats;
use super::error::ApiError;
use super::faults::{Faults, ScriptedFault};
use super::state::Shared;

impl Shared {
    pub(crate) fn stats(&self) -> Stats {
        self.lock().stats()
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
        state.clock.advance(super::clock::ms(secs.max(0.0)));
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

    pub(crate) fn vanish(&self, batch_id: &str) -> bool {
        self.lock().vanish(batch_id)
    }

    pub(crate) fn reset(&self) {
        self.lock().reset();
    }

    fn clock(&self) -> Value {
        let state = self.lock();
        json!({
            "now": super::clock::secs(state.clock.now()),
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
        .route("/admin/batches/{batch_id}/vanish", post(vanish))
        .route("/admin/clock", get(get_clock).post(post_clock))
        .route("/admin/reset", post(reset))
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(shared.stats())
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
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if shared.vanish(&id) {
        Ok(Json(json!({"id": id, "vanished": true})))
    } else {
        Err(super::lifecycle::no_such_batch(&id))
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
