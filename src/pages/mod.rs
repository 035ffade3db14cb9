//! The status pages: server-rendered HTML over the store's reads, served by the daemon on its
//! monitoring endpoint (`metrics.listen`, beside `/metrics`) or by `batchwatch serve` from a
//! database opened read-only. Read-only: no page changes anything.
//!
//! * `/`: counts per state, the stuck batches, a page of jobs (file, state, model, requests as
//!   a bar, age, deadline, cost, reason), filtered by `state` and `file` (a glob when it holds
//!   `*`, `?` or `[`, else a part of the name), paged by keyset (`after`, the last job of the
//!   page before: [`crate::store::Reads::jobs_page`]), at most [`MAX_PAGE`] a page (`limit`).
//! * `/jobs/{id}`: a job's facts, why it ended or waits, usage and cost, where its file and
//!   results are (paths, never contents), its resubmission chain, each batch with its status
//!   timeline ([`timeline`]) and history, and its events.
//! * `/batches/{id}`: one batch (by local number or remote id).
//! * `/instances`: the daemons that share the database, their leases and the leader.
//! * [`STYLESHEET_PATH`]: the one stylesheet, in the binary; light and dark.
//! * [`ICON_PATH`]: the pages' icon.
//! * [`SCRIPT_PATH`]: the one script, in the binary, and all a page does with scripts on:
//!   it refreshes the page's content every [`REFRESH_SECONDS`] (keeping the scroll position
//!   and the open details; paused while the tab is hidden, text is selected or a field has
//!   the focus) and shows absolute times in the browser's zone too. Every page works without
//!   it.
//!
//! # Safety
//!
//! Every value from outside (file names, metadata, reasons, the service's messages) reaches the
//! HTML through maud, which escapes it ([`view`]). Every answer carries [`CSP`] (no script
//! but this origin's one, styles from this origin only, no framing, forms only to this
//! origin) and `X-Content-Type-Options: nosniff`; `Server-Timing` says how long the answer
//! took to make. No page shows an API key, a request line or a result line: the pages read
//! the store, which holds none of them. When a token is configured
//! (`metrics.pages_token_file`, [`PagesToken`]), every request here must bear it as
//! `Authorization: Bearer TOKEN` (a reverse proxy adds it after its own authentication), or is
//! answered 401; the token is never logged. A non-loopback address without one is refused at
//! start ([`crate::config::MetricsSettings::check_pages_guarded`]).

mod timeline;
mod token;
mod view;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::sync::Arc;

use crate::clock::Timestamp;
use crate::config::StuckAfter;
use crate::daemon::gate::Gate;
use crate::model::JobState;
use crate::report;
use crate::store::Store;
use crate::store::jobs::Filter;
use crate::store::prelude::*;

pub use timeline::{CAP, Segment, WIDTH, segments};
pub use token::PagesToken;

/// The Content-Security-Policy of every answer: nothing but this origin's stylesheet and
/// script, the script's requests to this origin only, no inline script or style.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; \
                       connect-src 'self'; img-src 'self'; base-uri 'none'; \
                       form-action 'self'; frame-ancestors 'none'";

/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/style.css";

/// The stylesheet.
const STYLESHEET: &str = include_str!("style.css");

/// Where the icon is served (a page without one has the browser ask for `/favicon.ico`, in
/// vain).
pub const ICON_PATH: &str = "/icon.svg";

/// The icon.
const ICON: &str = include_str!("icon.svg");

/// Where the script is served.
pub const SCRIPT_PATH: &str = "/script.js";

/// The script: live refresh and local times.
const SCRIPT: &str = include_str!("script.js");

/// How often a page refreshes itself when scripts run (the script reads it from the page).
pub const REFRESH_SECONDS: u32 = 5;

/// Jobs on a page when the query does not say.
pub const PAGE: i64 = 50;

/// The most jobs on a page.
pub const MAX_PAGE: i64 = 500;

/// What the pages read, and the token they ask for.
#[derive(Clone, Debug)]
pub struct Pages {
    pub store: Store,
    pub token: Option<PagesToken>,
    pub stuck_after: StuckAfter,
    /// What holds work back, when the pages are the running daemon's (`batchwatch serve`
    /// has none: the gate lives in the daemon's memory).
    pub gate: Option<Arc<Gate>>,
}

/// The pages' routes, each behind the token (when one is set) and with the safety headers.
pub fn router(pages: Pages) -> Router {
    Router::new()
        .route("/", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/batches/{id}", get(batch))
        .route("/instances", get(instances))
        .route(
            STYLESHEET_PATH,
            get(|| asset("text/css; charset=utf-8", STYLESHEET)),
        )
        .route(
            SCRIPT_PATH,
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(ICON_PATH, get(|| asset("image/svg+xml", ICON)))
        .layer(axum::middleware::from_fn_with_state(pages.clone(), guard))
        .with_state(pages)
}

/// Refuses a request without the token (when one is set), and adds the safety headers and the
/// time the answer took (`Server-Timing`) to every answer, refusals included.
async fn guard(State(pages): State<Pages>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let allowed = match &pages.token {
        None => true,
        Some(token) => request
            .headers()
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|given| token.matches(given.trim())),
    };
    let mut response = if allowed {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"batchwatch\"")],
            "a token is needed: Authorization: Bearer TOKEN (metrics.pages_token_file)\n",
        )
            .into_response()
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    let took = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(timing) = HeaderValue::from_str(&format!("app;dur={took:.2}")) {
        headers.insert(SERVER_TIMING, timing);
    }
    response
}

/// `Server-Timing` (W3C Server Timing): how long the answer took to make, in ms.
const SERVER_TIMING: header::HeaderName = header::HeaderName::from_static("server-timing");

/// The query of `/`.
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    pub state: Option<String>,
    pub file: Option<String>,
    pub model: Option<String>,
    pub after: Option<String>,
    pub limit: Option<i64>,
}

impl JobsQuery {
    /// The state asked for; `None` for any (or for a name that is no state).
    fn state(&self) -> Option<JobState> {
        self.state.as_deref().and_then(|s| s.parse().ok())
    }

    /// The file filter as typed, when one is.
    fn file(&self) -> Option<&str> {
        self.file.as_deref().filter(|f| !f.trim().is_empty())
    }

    /// The model filter as typed, when one is.
    fn model(&self) -> Option<&str> {
        self.model
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
    }

    /// The store's filter: a file filter with `*`, `?` or `[` is a glob, as `status --file`
    /// takes it; other text is matched anywhere in the name.
    fn filter(&self) -> Filter {
        Filter {
            state: self.state(),
            file: self.file().map(|f| match f.contains(['*', '?', '[']) {
                true => f.to_owned(),
                false => format!("*{f}*"),
            }),
            since: None,
            model: self.model().map(str::to_owned),
        }
    }
}

fn html(markup: maud::Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page that says what is wrong, with its status.
fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    let mut response = html(view::problem(title, message, Timestamp::now()));
    *response.status_mut() = status;
    response
}

/// The database could not be read: said in the log with its cause, and on the page without it.
fn unreadable(error: impl std::fmt::Display) -> Response {
    tracing::warn!(%error, "status pages: cannot read the database");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Database unavailable",
        "The database cannot be read just now; the log says why.",
    )
}

async fn jobs(State(pages): State<Pages>, Query(query): Query<JobsQuery>) -> Response {
    if let Some(state) = query.state.as_deref().filter(|s| !s.is_empty())
        && query.state().is_none()
    {
        let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        return problem(
            StatusCode::BAD_REQUEST,
            "No such state",
            &format!("{state:?} is not a job state; one of: {}", names.join(", ")),
        );
    }
    let now = Timestamp::now();
    let limit = query.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let read = async {
        let after = query.after.as_deref().filter(|a| !a.is_empty());
        // One more than shown: whether there is a next page.
        let mut rows = pages
            .store
            .jobs_page(&query.filter(), after, limit + 1)
            .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let counts = pages.store.job_state_counts().await?;
        let stuck = pages.store.stuck(&pages.stuck_after, now).await?;
        Ok::<_, crate::store::StoreError>((rows, more, counts, stuck))
    };
    match read.await {
        Ok((rows, more, counts, stuck)) => html(view::jobs(&view::Jobs {
            query: &query,
            counts: &counts,
            stuck: &stuck,
            held: &Held::now(pages.gate.as_deref(), now),
            next: more.then(|| rows.last().map(|r| r.id.as_str())).flatten(),
            rows: &rows,
            now,
        })),
        Err(e) => unreadable(e),
    }
}

async fn job(State(pages): State<Pages>, Path(id): Path<String>) -> Response {
    match pages.store.job(&id).await {
        Ok(Some(_)) => {}
        Ok(None) => return problem(StatusCode::NOT_FOUND, "No such job", "No job has this id."),
        Err(e) => return unreadable(e),
    }
    match report::job_report(&pages.store, &id, &pages.stuck_after).await {
        Ok(report) => html(view::job(&report, Timestamp::now())),
        Err(e) => unreadable(crate::telemetry::join_causes(
            e.chain().map(ToString::to_string),
        )),
    }
}

async fn batch(State(pages): State<Pages>, Path(id): Path<String>) -> Response {
    let found = match id.parse::<i64>() {
        Ok(n) => pages.store.submission(n).await,
        Err(_) => pages.store.submission_by_remote_id(&id).await,
    };
    let submission = match found {
        Ok(Some(s)) => s,
        Ok(None) => {
            return problem(
                StatusCode::NOT_FOUND,
                "No such batch",
                "No batch has this id.",
            );
        }
        Err(e) => return unreadable(e),
    };
    match report::job_report(&pages.store, &submission.job_id, &pages.stuck_after).await {
        Ok(mut report) => {
            let Some(at) = report
                .batches
                .iter()
                .position(|b| b.submission.id == submission.id)
            else {
                return problem(
                    StatusCode::NOT_FOUND,
                    "No such batch",
                    "No batch has this id.",
                );
            };
            let b = report.batches.swap_remove(at);
            html(view::batch_page(
                &b,
                &report.job.file_name,
                Timestamp::now(),
            ))
        }
        Err(e) => unreadable(crate::telemetry::join_causes(
            e.chain().map(ToString::to_string),
        )),
    }
}

/// What the gate holds back at a moment, for the jobs page: all API work (a refused key, a
/// missing route), new submissions (exhausted quota), and new submissions per model (the
/// enqueued-token limit).
#[derive(Debug, Default)]
pub struct Held {
    pub paused: Option<crate::daemon::gate::Pause>,
    pub submissions_until: Option<Timestamp>,
    pub models: Vec<(String, Timestamp)>,
}

impl Held {
    fn now(gate: Option<&Gate>, now: Timestamp) -> Held {
        let Some(gate) = gate else {
            return Held::default();
        };
        Held {
            paused: gate.paused(),
            submissions_until: gate.submissions_held_until(now),
            models: gate.held_models_until(now),
        }
    }

    fn is_empty(&self) -> bool {
        self.paused.is_none() && self.submissions_until.is_none() && self.models.is_empty()
    }
}

async fn instances(State(pages): State<Pages>) -> Response {
    match pages.store.instances().await {
        Ok(rows) => html(view::instances(
            &rows,
            pages.store.file().is_some(),
            Timestamp::now(),
        )),
        Err(e) => unreadable(e),
    }
}

/// A file the binary holds (the stylesheet, the script, the icon), as `content_type`.
async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
