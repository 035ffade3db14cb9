//! The built-in simulator of the OpenAI Batch and Files API (`batchwatch sim`).
//!
//! It serves the endpoints of the reference OpenAPI description faithfully enough that the
//! official SDKs work against it unchanged, runs batches through their lifecycle in simulated
//! time, writes output and error files in the real line format, and injects faults on demand.
//! Users run it to try batchwatch and to test their pipelines without spending money; the
//! tests and `batchwatch demo` start it in-process with [`start`].
//!
//! # API
//!
//! Served under `/v1` (base URL `http://ADDR/v1`) and under `/openai/v1` (Azure-style):
//! `POST /files` (multipart, streamed to disk), `GET /files`, `GET /files/{id}`,
//! `GET /files/{id}/content` (streamed, with Content-Length), `DELETE /files/{id}`,
//! `POST /batches`, `GET /batches`, `GET /batches/{id}`, `POST /batches/{id}/cancel`.
//! A key is required as `Authorization: Bearer KEY` or `api-key: KEY`: with
//! [`SimConfig::api_key`] only that key, otherwise any non-empty one. Errors have the real
//! shape `{"error": {"message", "type", "param", "code"}}`.
//!
//! Batches go validating → in_progress → finalizing → completed, with durations set in
//! simulated seconds and [`SimConfig::time_scale`] simulated seconds per real second. A create
//! validates its input file with [`crate::batchfile::validate`], the daemon's own rules; a
//! broken rule fails the batch with `errors.data[0]` naming the `code`, `line` and `param`.
//! A batch still running at `created_at` + the completion window expires with partial output;
//! a cancelled one is `cancelling` for a while, then `cancelled` with partial output.
//!
//! # Admin API
//!
//! JSON, never subject to faults or keys:
//! - `GET /admin/stats`: [`Stats`]: batches created per `batchwatch_job_id` metadata value,
//!   requests per `METHOD /route/{template}`, faults injected per kind, and every batch's
//!   status history with simulated and real timestamps.
//! - `GET /admin/faults`, `PUT /admin/faults` (replace), `PATCH /admin/faults` (set the
//!   fields given): the standing [`Faults`].
//! - `GET /admin/faults/script`, `POST /admin/faults/script` (append one [`ScriptedFault`] or
//!   a list, e.g. `{"kind": "rate_limit", "retry_after": {"millis": 1500}, "times": 2,
//!   "method": "POST", "path": "/v1/batches"}`, or `{"kind": "status", "status": 503}` for
//!   any error status), `DELETE /admin/faults/script` (clear).
//! - `GET /admin/counts`: [`Counts`]: requests per route and batches per status, cheap enough
//!   to ask every second of a fleet benchmark (unlike the stats, which hold every history).
//! - `POST /admin/batches/step` `{"ids": [...]}` or `{"count": K}`: ends the current stage of
//!   those batches (or of K picked at random among the clients' batches in progress) now:
//!   `in_progress` goes to `finalizing` with every request done, `finalizing` to `completed`,
//!   `cancelling` to `cancelled`. With long durations (`--in-progress-secs 10000000`) a fleet
//!   stays in progress while a benchmark moves the few it wants, at instants it knows
//!   ([`Stepped::at_ms`]; every [`Transition`] also has its simulated millisecond).
//! - `GET /admin/observations`, `POST /admin/observations/reset`: [`Observations`]: how often
//!   each batch was sent to a client (retrieve, list page, create or cancel answer) and the
//!   longest it went unseen, to check that a client sees every batch often enough.
//! - `POST /admin/batches/{id}/vanish`: the batch answers 404 from now on.
//! - `GET /admin/clock`, `POST /admin/clock` `{"advance_secs": 86400, "time_scale": 0}`:
//!   read the simulated clock, jump it ahead, or change its speed (0 stops it).
//! - `POST /admin/reset`: forget every file, batch and count; faults return to the
//!   configured ones.
//! - `GET /admin/files`: [`HeldFile`]s: every file the simulator holds, whoever made it.
//! - `PUT /admin/key` `{"key": "sk-..."}`: accept only that key from now on (a rotated key);
//!   `{"key": null}`: any non-empty key.
//!
//! # Fleets
//!
//! Built to serve tens of thousands of batches: a lock with nothing due costs the same with
//! 20,000 batches as with one (events wait in a heap, `lifecycle.rs`), retrieve finds its batch
//! by id, and a list page reads only its own batches wherever it is in the list
//! (`listing.rs`). Two settings make the list less convenient than the real one, to test
//! clients that list: [`SimConfig::list_order`] (`--list-order shuffled`: no time order, but
//! every walk still complete and consistent) and [`SimConfig::foreign_batches`]
//! (`--foreign-batches N`: another tool's batches interleaved with the clients', without
//! batchwatch metadata, `foreign.rs`).
//!
//! # Restarts
//!
//! State lives in memory and file contents in the data directory. A simulator given a data
//! directory of its own (`--data-dir`) saves its state there as `state.json` when it stops
//! cleanly (SIGTERM, SIGINT, [`SimHandle::shutdown`]) and loads it at the next start: files,
//! batches and their histories, ids and counters carry on. The simulated clock resumes at its
//! saved reading, so the time it was down does not count and no batch jumps ahead into expiry;
//! faults, the time scale and the durations come from the new start's configuration. After a
//! crash, or without a data directory, a restarted simulator starts empty. Details and limits:
//! `persist.rs`.

mod admin;
mod args;
mod batches;
mod clock;
mod conn;
mod error;
mod faults;
mod files;
mod foreign;
mod lifecycle;
mod listing;
mod output;
mod persist;
mod routes;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use admin::{BatchObservation, Counts, HeldFile, Observations, Step, Stepped};
pub use args::{SimArgs, run};
pub use faults::{AuthFault, ErrorStatus, FaultKind, Faults, RetryAfter, ScriptedFault};
pub use listing::ListOrder;
pub use persist::STATE_FILE;
pub use state::Transition;

use crate::batchfile::Limits;
use conn::{ConnKill, KillableListener};
use state::Shared;

/// How long a shutdown waits for open connections before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Everything the simulator can be told. Durations are simulated seconds.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Simulated seconds per real second; 0 stops the clock (move it with [`SimHandle::advance`]).
    pub time_scale: f64,
    /// The simulated clock's reading at start, in unix seconds; default: the real time.
    pub start_time: Option<i64>,
    /// Seeds every random choice; default: a random seed (see [`SimHandle::seed`]).
    pub seed: Option<u64>,
    /// The only key accepted; default: any non-empty key.
    pub api_key: Option<SecretString>,
    /// Where files are kept; default: a temporary directory removed at exit. A directory given
    /// here also keeps the state across a clean restart (see "Restarts" above).
    pub data_dir: Option<PathBuf>,
    /// How long a batch is `validating`.
    pub validating_secs: f64,
    /// How long a batch is `in_progress`, plus `request_secs` per request.
    pub in_progress_secs: f64,
    /// Added to `in_progress_secs` for every request in the batch.
    pub request_secs: f64,
    /// How long a batch is `finalizing`.
    pub finalizing_secs: f64,
    /// How long a batch is `cancelling`.
    pub cancelling_secs: f64,
    /// A batch not done this long after its creation expires (the "24h" window).
    pub completion_window_secs: f64,
    /// The size and request limits of an input file.
    pub limits: Limits,
    /// The faults in force at start.
    pub faults: Faults,
    /// The order of `GET /batches` (see `listing.rs`).
    pub list_order: ListOrder,
    /// How many batches the simulated other tool creates in all (see `foreign.rs`).
    pub foreign_batches: u64,
    /// How many it creates after each batch a client creates.
    pub foreign_per_create: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            time_scale: 1.0,
            start_time: None,
            seed: None,
            api_key: None,
            data_dir: None,
            validating_secs: 10.0,
            in_progress_secs: 60.0,
            request_secs: 0.0,
            finalizing_secs: 10.0,
            cancelling_secs: 30.0,
            completion_window_secs: 24.0 * 3600.0,
            limits: Limits {
                max_requests: 50_000,
                max_bytes: 200_000_000,
            },
            faults: Faults::default(),
            list_order: ListOrder::NewestFirst,
            foreign_batches: 0,
            foreign_per_create: 1,
        }
    }
}

impl SimConfig {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.time_scale >= 0.0 && self.time_scale.is_finite(),
            "the time scale must be a non-negative number, not {}",
            self.time_scale
        );
        for (name, secs) in [
            ("validating", self.validating_secs),
            ("in-progress", self.in_progress_secs),
            ("per-request", self.request_secs),
            ("finalizing", self.finalizing_secs),
            ("cancelling", self.cancelling_secs),
            ("completion window", self.completion_window_secs),
        ] {
            anyhow::ensure!(
                secs >= 0.0 && secs.is_finite(),
                "the {name} duration must be a non-negative number of seconds, not {secs}"
            );
        }
        anyhow::ensure!(
            self.limits.max_requests > 0 && self.limits.max_bytes > 0,
            "the file limits must be positive"
        );
        anyhow::ensure!(
            self.foreign_batches == 0 || self.foreign_per_create > 0,
            "the foreign batches per create must be at least 1 when there are foreign batches"
        );
        self.faults
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid faults: {e}"))
    }
}

/// What the admin API reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The simulated clock, in unix seconds.
    pub now: i64,
    /// Batches created per value of the metadata key `batchwatch_job_id`.
    pub batches_by_job: BTreeMap<String, u64>,
    /// Requests received per `METHOD /route/{template}` (faulted ones included).
    pub requests: BTreeMap<String, u64>,
    /// Faults injected per kind.
    pub faults_injected: BTreeMap<String, u64>,
    /// Every batch ever created, oldest first.
    pub batches: Vec<BatchStats>,
}

/// One batch in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStats {
    pub id: String,
    pub status: String,
    pub job_id: Option<String>,
    /// Created by the simulated other tool (`--foreign-batches`), not by a client.
    pub foreign: bool,
    pub vanished: bool,
    /// Every status it took, in order.
    pub history: Vec<Transition>,
}

/// A running simulator. Dropping it stops the server; [`SimHandle::shutdown`] also waits.
pub struct SimHandle {
    addr: SocketAddr,
    seed: u64,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
    ticker: Option<JoinHandle<()>>,
    /// Whether [`SimHandle::shutdown`] saves the state (the data dir is not a temporary one).
    persist: bool,
}

/// Starts a simulator listening on `listen` (port 0 picks a free port).
pub async fn start(listen: SocketAddr, mut config: SimConfig) -> anyhow::Result<SimHandle> {
    config.validate()?;
    let seed = *config.seed.get_or_insert_with(|| fastrand::u64(..));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the simulator to {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let shared = Arc::new(Shared::new(&config)?);
    persist::resume(&shared);
    let stop = CancellationToken::new();
    let app = routes::router(shared.clone());
    let server = axum::serve(
        KillableListener(listener),
        app.into_make_service_with_connect_info::<ConnKill>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });
    let ticker = tokio::spawn(lifecycle::run_ticker(shared.clone(), stop.clone()));
    tracing::info!(%addr, seed, "simulator listening");
    Ok(SimHandle {
        addr,
        seed,
        shared,
        stop,
        server: Some(server),
        ticker: Some(ticker),
        persist: config.data_dir.is_some(),
    })
}

impl SimHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the OpenAI-style base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://ADDR/openai/v1`, the Azure-style base URL.
    pub fn azure_base_url(&self) -> String {
        format!("http://{}/openai/v1", self.addr)
    }

    /// `http://ADDR/admin`, the root of the admin API.
    pub fn admin_url(&self) -> String {
        format!("http://{}/admin", self.addr)
    }

    /// Where file contents are kept (a temporary directory unless one was configured).
    pub fn data_dir(&self) -> &Path {
        &self.shared.data_dir
    }

    /// The seed in use (the configured one, or the one drawn at start).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Batches per job, requests per endpoint, faults injected, every batch's history.
    pub async fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The standing faults.
    pub async fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Replaces the standing faults; refuses invalid shares.
    pub async fn set_faults(&self, faults: Faults) -> anyhow::Result<()> {
        self.shared
            .set_faults(faults)
            .map_err(|e| anyhow::anyhow!("invalid faults: {e}"))
    }

    /// Appends an entry to the scripted fault queue.
    pub async fn push_fault(&self, fault: ScriptedFault) {
        self.shared.push_script(vec![fault]);
    }

    /// The scripted faults not used up yet.
    pub async fn scripted_faults(&self) -> Vec<ScriptedFault> {
        self.shared.script()
    }

    /// Empties the scripted fault queue.
    pub async fn clear_scripted_faults(&self) {
        self.shared.clear_script();
    }

    /// Jumps the simulated clock `secs` ahead and moves every batch along.
    pub async fn advance(&self, secs: f64) {
        self.shared.advance(secs);
    }

    /// Changes the clock's speed (0 stops it).
    pub async fn set_time_scale(&self, scale: f64) -> anyhow::Result<()> {
        self.shared
            .set_time_scale(scale)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Requests per route and batches per status: the cheap part of [`SimHandle::stats`].
    pub async fn counts(&self) -> Counts {
        self.shared.counts()
    }

    /// Ends the current stage of some batches now (see [`Step`]).
    pub async fn step(&self, step: Step) -> anyhow::Result<Vec<Stepped>> {
        self.shared
            .step(step)
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    /// How often each batch was sent to a client, and its longest gap unseen.
    pub async fn observations(&self) -> Observations {
        self.shared.observations()
    }

    /// Starts counting observations afresh.
    pub async fn reset_observations(&self) {
        self.shared.reset_observations();
    }

    /// Makes a batch vanish (404 from now on); `false` when there is no such batch.
    pub async fn vanish(&self, batch_id: &str) -> bool {
        self.shared.vanish(batch_id)
    }

    /// Every file it holds (uploaded or generated, by any client), oldest first.
    pub async fn files(&self) -> Vec<HeldFile> {
        self.shared.files()
    }

    /// Accepts only `key` from now on; any non-empty key when `None`.
    pub async fn set_api_key(&self, key: Option<&str>) {
        self.shared.set_api_key(key.map(SecretString::from));
    }

    /// Forgets every file, batch and count; faults return to the configured ones.
    pub async fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting requests, gives open connections a moment, and stops; with a data dir of
    /// its own, it then saves its state there for the next start.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(joined) => joined
                    .context("the simulator's server task failed")?
                    .context("the simulator's server failed")?,
                Err(_) => server.abort(),
            }
        }
        if let Some(ticker) = self.ticker.take() {
            ticker.await.context("the simulator's ticker failed")?;
        }
        if self.persist {
            persist::save(&self.shared).await?;
        }
        Ok(())
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
