//! The monitoring endpoint on `metrics.listen`: `GET /metrics`, `/healthz` and `/readyz`,
//! and the status pages beside them ([`crate::pages`], unless `metrics.pages = false`); the
//! same server serves the pages alone for `batchwatch serve`.
//!
//! It binds before the daemon recovers, so a port in use stops the start at once (a
//! configuration error, exit 78) and a probe gets an answer from the first second:
//!
//! * `/healthz`: 200 while the process answers.
//! * `/readyz`: 200 when the daemon has recovered from the previous run, the database takes a
//!   write lock (checked on a connection of its own, with a one-second wait), every directory of
//!   the queue tree is there, and a round of the main loop succeeded within [`LOOP_STALE`]
//!   (a round that failed, on a full disk say, does not count), the last API request was
//!   answered (whatever it said), and the API's gate is open (not closed by a refused key or
//!   a missing route: [`crate::daemon::gate`]); else 503 with one line per reason.
//! * `/metrics`: OpenMetrics text to a scraper that asks for it (Prometheus does), the classic
//!   text format to any other (see [`super::to_classic_text`]). The row figures are read from the
//!   database at most once per [`FIGURES_TTL`], whatever the scrape rate.
//!
//! # No way in
//!
//! Anyone on the host can connect, so the endpoint must never take what the daemon needs. It
//! serves its connections itself, one request each:
//!
//! * at most [`MAX_CONNECTIONS`] at once (plenty for scrapers and probes); one more is answered
//!   503 at once and closed;
//! * a request whose headers have not all arrived [`HEADER_TIMEOUT`] after the connection was
//!   accepted is dropped, and every connection is closed [`CONNECTION_DEADLINE`] after it was
//!   accepted, whatever it is doing (a slow reader);
//! * it keeps no connection that would leave fewer file descriptors free (under the soft
//!   RLIMIT_NOFILE, which `batchwatch run` raises to the hard limit at start) than the daemon's
//!   reserve ([`descriptor_reserve`]), for its files, database and API connections. Such a
//!   connection is refused like one beyond the maximum; with fewer than half the reserve free,
//!   the endpoint stops accepting at all, and connections wait in the kernel's queue;
//! * `/readyz` probes the database one request at a time, so a flood of probes holds one
//!   connection's descriptors, not one each.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Disk, Metrics};
use crate::clock::{self, Timestamp};
use crate::config::{ConfigError, LimitSettings, StuckAfter};
use crate::daemon::gate::Gate;
use crate::daemon::runtime::instance::database_dir;
use crate::pages::Pages;
use crate::queue::Queue;
use crate::store::Store;
use crate::store::figures::Figures;
use crate::store::prelude::*;

/// The main loop is called stalled when its last successful round ended longer ago than this.
pub const LOOP_STALE: Duration = Duration::from_secs(30);

/// Figures read from the database are reused for this long, so scrapes cost the database at
/// most one read per period.
pub const FIGURES_TTL: Duration = Duration::from_secs(1);

/// How long `/readyz` waits for the database's write lock.
const WRITE_PROBE_WAIT: Duration = Duration::from_secs(1);

/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 32;

/// How long after its connection was accepted a request's headers may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after it was accepted a connection is closed, whatever it is doing: longer than
/// any answer takes, and Prometheus gives up on a scrape after 10 s by default.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// File descriptors the endpoint leaves free for the daemon's own work: two for each task the
/// daemon may run at once (a file and an API connection), and 16 for the database and the
/// rest. With fewer than half of it free, the endpoint accepts nothing, not even to refuse
/// (which holds a descriptor for a moment).
pub fn descriptor_reserve(limits: &LimitSettings) -> u64 {
    16 + 2 * limits.tasks() as u64
}

/// How long the endpoint waits before it looks again when descriptors are short.
const RESERVE_RECHECK: Duration = Duration::from_millis(100);

/// How often, at most, refused connections (or failed accepts) are logged: a flood would
/// flood the journal.
const LOGGED_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// What the daemon tells the endpoint about itself.
#[derive(Debug, Default)]
pub struct Health {
    recovered: AtomicBool,
    rounds: Mutex<Rounds>,
}

/// How the main loop's rounds went.
#[derive(Debug, Default)]
struct Rounds {
    /// When the last round that succeeded ended.
    succeeded: Option<Instant>,
    /// Why the last round failed, when it did.
    failed: Option<String>,
}

impl Health {
    /// Recovery from the previous run is done.
    pub fn recovered(&self) {
        self.recovered.store(true, Ordering::Release);
    }

    /// The main loop finished a round without an error.
    pub fn round_succeeded(&self) {
        let mut rounds = self.rounds.lock().expect("health lock");
        rounds.succeeded = Some(Instant::now());
        rounds.failed = None;
    }

    /// A round of the main loop failed with `error`.
    pub fn round_failed(&self, error: String) {
        self.rounds.lock().expect("health lock").failed = Some(error);
    }

    /// Why the main loop is not ready; `None` when it is.
    fn loop_not_ready(&self) -> Option<String> {
        let rounds = self.rounds.lock().expect("health lock");
        let failed = rounds
            .failed
            .as_ref()
            .map(|e| format!("; the last round failed: {e}"))
            .unwrap_or_default();
        match rounds.succeeded {
            Some(at) if at.elapsed() <= LOOP_STALE => None,
            Some(at) => Some(format!(
                "the main loop's last successful round ended {}s ago (more than {}s){failed}",
                at.elapsed().as_secs(),
                LOOP_STALE.as_secs()
            )),
            None if self.recovered.load(Ordering::Acquire) => Some(format!(
                "the main loop has not finished a round without error yet{failed}"
            )),
            None => None,
        }
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
    /// Closed while the API refuses the key or has no route at `api.base_url`.
    pub gate: Arc<Gate>,
    cached: Arc<tokio::sync::Mutex<Option<(Instant, Figures)>>>,
    /// Held while `/readyz` probes the database.
    probing: Arc<tokio::sync::Mutex<()>>,
}

impl Endpoint {
    pub fn new(
        metrics: Metrics,
        store: Store,
        queue: Queue,
        stuck_after: StuckAfter,
        health: Arc<Health>,
        gate: Arc<Gate>,
    ) -> Endpoint {
        Endpoint {
            metrics,
            store,
            queue,
            stuck_after,
            health,
            gate,
            cached: Arc::default(),
            probing: Arc::default(),
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
        match self.store.figures(&self.stuck_after, now).await {
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

    /// The filesystems of the queue tree and the SQLite database, as they are now (one that
    /// cannot be asked is left out; a PostgreSQL server's disks are its own to watch).
    fn disks(&self) -> Vec<Disk> {
        let database = self.store.file().map(database_dir);
        [("queue", Some(self.queue.root())), ("database", database)]
            .into_iter()
            .filter_map(|(dir, path)| Some((dir, path?)))
            .filter_map(|(dir, path)| {
                let space = crate::process::disk_space(path).ok()?;
                Some(Disk { dir, space })
            })
            .collect()
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
                self.store.place()
            ));
        }
        for dir in self.queue.dirs() {
            if !dir.is_dir() {
                reasons.push(format!("queue directory {} is missing", dir.display()));
            }
        }
        reasons.extend(self.health.loop_not_ready());
        if let Some((since, error)) = self.metrics.api_unanswered() {
            reasons.push(format!(
                "the API has not answered since {}: {error}",
                clock::format(since)
            ));
        }
        if let Some(pause) = self.gate.paused() {
            reasons.push(format!(
                "all API work is stopped ({}) since {}: {}",
                pause.cause,
                clock::format(pause.since),
                pause.message
            ));
        }
        reasons
    }

    /// Takes the database's write lock on a connection of its own, and lets it go; one probe
    /// at a time.
    async fn probe_write(&self) -> Result<(), String> {
        let _probing = self.probing.lock().await;
        self.store
            .probe_write(WRITE_PROBE_WAIT)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The endpoint's server task; dropping it stops the server.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// The daemon's reserve of file descriptors ([`descriptor_reserve`]).
    reserve: Arc<AtomicU64>,
}

impl Server {
    /// Keeps the reserve that `limits` call for (after a reload).
    pub fn reserve_for(&self, limits: &LimitSettings) {
        self.reserve
            .store(descriptor_reserve(limits), Ordering::Relaxed);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The endpoint's routes: `/metrics`, `/healthz` and `/readyz`, and the status pages beside
/// them when `pages` are served ([`crate::pages`]).
pub fn routes(endpoint: Endpoint, pages: Option<Pages>) -> Router {
    let monitoring = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoint);
    match pages {
        Some(pages) => monitoring.merge(crate::pages::router(pages)),
        None => monitoring,
    }
}

/// The routes of `batchwatch serve`: the status pages and `/healthz`.
pub fn pages_routes(pages: Pages) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::pages::router(pages))
}

/// Binds `addr` and serves `app` there (as `what`, for the log), leaving the reserve of
/// descriptors `limits` call for. A port that cannot be had is a configuration error naming
/// `key` (`metrics.listen`).
pub fn serve(
    addr: SocketAddr,
    key: &str,
    app: Router,
    limits: &LimitSettings,
    what: &str,
) -> Result<Server, ConfigError> {
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std)
        .map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => "the port is in use by another process".to_owned(),
                _ => e.to_string(),
            };
            ConfigError::key(
                key,
                format!(
                    "cannot listen on {addr}: {why}; choose another address, or set it to \"\" \
                     to turn the endpoint off"
                ),
            )
        })?;
    let addr = bound.local_addr().unwrap_or(addr);
    let reserve = Arc::new(AtomicU64::new(descriptor_reserve(limits)));
    let task = tokio::spawn(accept(bound, app, reserve.clone()));
    tracing::info!(%addr, "{what}");
    Ok(Server {
        addr,
        task,
        reserve,
    })
}

/// Takes connections while descriptors are to spare, and serves each that fits under
/// [`MAX_CONNECTIONS`] and leaves the `reserve` free.
async fn accept(listener: TcpListener, app: Router, reserve: Arc<AtomicU64>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refusals = Throttled::default();
    let mut pauses = Throttled::default();
    let mut failures = Throttled::default();
    loop {
        let reserve = reserve.load(Ordering::Relaxed);
        if !descriptors_to_spare(reserve / 2) {
            if pauses.due().is_some() {
                tracing::warn!(
                    limit = crate::process::open_file_limit().map_or(0, |(soft, _)| soft),
                    "the metrics endpoint accepts no connections: the process is near its \
                     open-file limit (raise LimitNOFILE= if this lasts)"
                );
            }
            tokio::time::sleep(RESERVE_RECHECK).await;
            continue;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if let Some(failed) = failures.due() {
                    tracing::warn!(
                        error = %e,
                        failed,
                        "the metrics endpoint cannot accept connections"
                    );
                }
                tokio::time::sleep(RESERVE_RECHECK).await;
                continue;
            }
        };
        // Counted after the accept: the daemon may have opened files while it waited.
        match slots.clone().try_acquire_owned() {
            Ok(slot) if descriptors_to_spare(reserve) => {
                tokio::spawn(serve_connection(stream, app.clone(), slot));
            }
            _ => {
                refuse(&stream);
                if let Some(refused) = refusals.due() {
                    tracing::warn!(
                        refused,
                        max = MAX_CONNECTIONS,
                        reserve,
                        "the metrics endpoint refuses connections: it serves its maximum, or \
                         the daemon's reserve of file descriptors would be touched"
                    );
                }
            }
        }
    }
}

/// Whether at least `n` file descriptors are free (yes when that cannot be told).
fn descriptors_to_spare(n: u64) -> bool {
    crate::process::free_descriptors().is_none_or(|free| free >= n)
}

/// What a connection beyond the maximum is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 21\r\n\
retry-after: 1\r\n\
connection: close\r\n\r\n\
too many connections\n";

/// Answers 503 without waiting for anything, and closes the connection (when `stream` drops).
fn refuse(stream: &TcpStream) {
    // What has arrived of the request is read, so that closing does not reset the connection
    // before the client reads the answer.
    let _ = stream.try_read(&mut [0; 4096]);
    let _ = stream.try_write(REFUSAL);
}

/// Serves one request on `stream` within [`HEADER_TIMEOUT`] and [`CONNECTION_DEADLINE`];
/// `_slot` is given back when it ends.
async fn serve_connection(stream: TcpStream, app: Router, _slot: OwnedSemaphorePermit) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false);
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "a metrics endpoint connection failed"),
        Err(_) => tracing::debug!("a metrics endpoint connection was closed at its deadline"),
    }
}

/// Counts events and says when to log them: at the first, then at most once per
/// [`LOGGED_AT_MOST_EVERY`].
#[derive(Default)]
struct Throttled {
    count: u64,
    logged_at: Option<Instant>,
}

impl Throttled {
    /// Counts one event; when it should be logged now, how many there were since the last log.
    fn due(&mut self) -> Option<u64> {
        self.count += 1;
        if self
            .logged_at
            .is_some_and(|at| at.elapsed() < LOGGED_AT_MOST_EVERY)
        {
            return None;
        }
        self.logged_at = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

async fn metrics(State(endpoint): State<Endpoint>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let now = Timestamp::now();
    let figures = endpoint.figures(now).await;
    let body = endpoint
        .metrics
        .render(figures.as_ref(), &endpoint.disks(), now, !openmetrics);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_http_answer() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
    }

    #[test]
    fn refusals_are_logged_at_the_first_then_counted_until_the_next_log() {
        let mut t = Throttled::default();
        assert_eq!(t.due(), Some(1));
        assert_eq!(t.due(), None);
        assert_eq!(t.due(), None);
        t.logged_at = Instant::now().checked_sub(LOGGED_AT_MOST_EVERY);
        assert_eq!(t.due(), Some(3));
    }
}
