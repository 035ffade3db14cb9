//! The monitoring endpoint on `metrics.listen`: `GET /metrics`, `/healthz` and `/readyz`.
//!
//! It binds before the daemon recovers, so a port in use stops the start at once (a
//! configuration error, exit 78) and a probe gets an answer from the first second:
//!
//! * `/healthz`: 200 while the process answers.
//! * `/readyz`: 200 when the daemon has recovered from the previous run, the database takes a
//!   write lock (checked on a connection of its own, with a one-second wait), every directory of
//!   the queue tree is there, and the main loop finished a round within [`LOOP_STALE`]; else 503
//!   with one line per reason.
//! * `/metrics`: OpenMetrics text to a scraper that asks for it (Prometheus does), the classic
//!   text format to any other (see [`super::to_classic_text`]). The row figures are read from the
//!   database at most once per [`FIGURES_TTL`], whatever the scrape rate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::Connection;

use super::Metrics;
use crate::clock::Timestamp;
use crate::config::{ConfigError, StuckAfter};
use crate::queue::Queue;
use crate::store::Store;
use crate::store::figures::{self, Figures};

/// The main loop is called stalled when its last round ended longer ago than this.
pub const LOOP_STALE: Duration = Duration::from_secs(30);

/// Figures read from the database are reused for this long, so scrapes cost the database at
/// most one read per period.
pub const FIGURES_TTL: Duration = Duration::from_secs(1);

/// How long `/readyz` waits for the database's write lock.
const WRITE_PROBE_WAIT: Duration = Duration::from_secs(1);

/// What the daemon tells the endpoint about itself.
#[derive(Debug, Default)]
pub struct Health {
    recovered: AtomicBool,
    last_round: Mutex<Option<Instant>>,
}

impl Health {
    /// Recovery from the previous run is done.
    pub fn recovered(&self) {
        self.recovered.store(true, Ordering::Release);
    }

    /// The main loop finished a round.
    pub fn round_done(&self) {
        *self.last_round.lock().expect("health lock") = Some(Instant::now());
    }
}

/// Everything the endpoint reads.
#[derive(Clone)]
pub struct Endpoint {
    pub metrics: Metrics,
    pub store: Store,
    pub queue: Queue,
    pub stuck_after: StuckAfter,
    pub health: Arc<Health>,
    cached: Arc<tokio::sync::Mutex<Option<(Instant, Figures)>>>,
}

impl Endpoint {
    pub fn new(
        metrics: Metrics,
        store: Store,
        queue: Queue,
        stuck_after: StuckAfter,
        health: Arc<Health>,
    ) -> Endpoint {
        Endpoint {
            metrics,
            store,
            queue,
            stuck_after,
            health,
            cached: Arc::default(),
        }
    }

    /// The figures from the database, read again when older than [`FIGURES_TTL`]; `None` when
    /// the database cannot be read.
    async fn figures(&self, now: Timestamp) -> Option<Figures> {
        let mut cached = self.cached.lock().await;
        if let Some((at, figures)) = cached.as_ref()
            && at.elapsed() < FIGURES_TTL
        {
            return Some(figures.clone());
        }
        match figures::read(self.store.reader(), &self.stuck_after, now).await {
            Ok(figures) => {
                *cached = Some((Instant::now(), figures.clone()));
                Some(figures)
            }
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::chain(&e), "metrics: cannot read the database");
                None
            }
        }
    }

    /// Why the daemon is not ready; empty when it is.
    pub async fn not_ready(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.health.recovered.load(Ordering::Acquire) {
            reasons.push("recovering from the previous run".to_owned());
        }
        if let Err(e) = self.probe_write().await {
            reasons.push(format!(
                "database {} is not writable: {e}",
                self.store.path().display()
            ));
        }
        for dir in [
            &self.queue.incoming,
            &self.queue.processing,
            &self.queue.done,
            &self.queue.failed,
            &self.queue.results,
        ] {
            if !dir.is_dir() {
                reasons.push(format!("queue directory {} is missing", dir.display()));
            }
        }
        let last = *self.health.last_round.lock().expect("health lock");
        match last {
            Some(at) if at.elapsed() <= LOOP_STALE => {}
            Some(at) => reasons.push(format!(
                "the main loop's last round ended {}s ago (more than {}s)",
                at.elapsed().as_secs(),
                LOOP_STALE.as_secs()
            )),
            None if self.health.recovered.load(Ordering::Acquire) => {
                reasons.push("the main loop has not finished a round yet".to_owned())
            }
            None => {}
        }
        reasons
    }

    /// Takes the database's write lock on a connection of its own, and lets it go.
    async fn probe_write(&self) -> Result<(), String> {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.store.path())
            .busy_timeout(WRITE_PROBE_WAIT);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| e.to_string())?;
        let result = match sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await {
            Ok(_) => sqlx::query("ROLLBACK")
                .execute(&mut conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let _ = conn.close().await;
        result
    }
}

/// The endpoint's server task; dropping it stops the server.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves the endpoint there. A port that cannot be had is a configuration
/// error naming `metrics.listen`.
pub fn serve(addr: SocketAddr, endpoint: Endpoint) -> Result<Server, ConfigError> {
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => "the port is in use by another process".to_owned(),
                _ => e.to_string(),
            };
            ConfigError::key(
                "metrics.listen",
                format!(
                    "cannot listen on {addr}: {why}; choose another address, or set it to \"\" \
                     to turn the endpoint off"
                ),
            )
        })?;
    let addr = bound.local_addr().unwrap_or(addr);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoint);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(bound, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "metrics endpoint listening (/metrics, /healthz, /readyz)");
    Ok(Server { addr, task })
}

async fn metrics(State(endpoint): State<Endpoint>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let now = Timestamp::now();
    let figures = endpoint.figures(now).await;
    let body = endpoint.metrics.render(figures.as_ref(), now, !openmetrics);
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(endpoint): State<Endpoint>) -> Response {
    let reasons = endpoint.not_ready().await;
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_owned()).into_response()
    } else {
        let body = format!("not ready: {}\n", reasons.join("; "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}
