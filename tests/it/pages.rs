//! The status pages, over real HTTP on a socket: the jobs list with its counts, filters and
//! keyset paging on SQLite and PostgreSQL (the store's read is new in both), a hostile file
//! name rendered as text, the safety headers, a job's status timeline against its history, the
//! token off loopback (refused at start without one; 401 without it, 200 with it), nothing
//! secret on a page or in the log, and `batchwatch serve` reading a database it never writes.
//!
//! Browser tests (a real Chromium) are not here yet: these read the HTML as text.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use batchwatch::config::{DatabaseLocation, Settings};
use batchwatch::metrics::server::{self, Server};
use batchwatch::model::JobState;
use batchwatch::pages::{CSP, Pages};
use batchwatch::store::jobs::{Filter, NewJob, Why};
use batchwatch::store::prelude::*;
use batchwatch::store::{Access, Lease, Store};

use crate::support::daemon::{Env, quick_sim, requests};
use crate::support::fixtures::{self, T0, job_id, seen};
use crate::support::process::{Running, command, output_within};
use crate::support::sim::{http_client, spawn_sim};
use crate::support::{KEY, Sandbox};

const BUSY: Duration = Duration::from_secs(5);

/// Serves the pages of `store` on a free loopback port, in this process.
fn serve_pages(store: Store) -> Server {
    let settings = Settings::load_from(None, std::iter::empty::<(String, String)>())
        .expect("the defaults load");
    let pages = Pages {
        store,
        token: None,
        stuck_after: settings.alerts.stuck_after,
        gate: None,
    };
    server::serve(
        "127.0.0.1:0".parse().unwrap(),
        "metrics.listen",
        server::pages_routes(pages),
        &settings.limits,
        "status pages listening (test)",
    )
    .expect("the pages listen")
}

/// An answer: status, headers, body.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn get_with(addr: SocketAddr, path: &str, token: Option<&str>) -> Got {
    let mut request = http_client().get(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the pages answer");
    Got {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Got {
    get_with(addr, path, None).await
}

/// The job ids a jobs page lists, in order (the links of its table).
fn listed(body: &str) -> Vec<String> {
    let Some(table) = body.split("<tbody>").nth(1) else {
        return Vec::new();
    };
    let table = table.split("</tbody>").next().unwrap();
    table
        .split("href=\"/jobs/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

/// The link to the next (older) page, as a path and query, when there is one.
fn older(body: &str) -> Option<String> {
    let at = body.find("\">Older →")?;
    let start = body[..at].rfind("href=\"")? + "href=\"".len();
    Some(body[start..at].replace("&amp;", "&"))
}

/// The figure a jobs page gives for `label` in its counts ("all", or a state).
fn count(body: &str, label: &str) -> i64 {
    let needle = format!("</span> {label}</a>");
    let at = body
        .find(&needle)
        .unwrap_or_else(|| panic!("no count for {label}"));
    let start = body[..at].rfind('>').unwrap() + 1;
    body[start..at].parse().unwrap()
}

/// Claims `n` jobs through the store's operations: a third each queued (model m-a, or m-b),
/// rejected, left validating; names eval-NNN.jsonl and train-NNN.jsonl alternately. Returns
/// the ids by state.
async fn fill_many(store: &Store, n: u64) -> Vec<(String, JobState)> {
    let lease = Lease::SOLE;
    let mut made = Vec::new();
    for i in 0..n {
        let id = job_id(1_000 + i);
        let kind = if i % 2 == 0 { "eval" } else { "train" };
        let name = format!("{kind}-{i:03}.jsonl");
        let path = format!("processing/{id}__{name}");
        let job = fixtures::port_job(&id, &name, &path);
        store.claim(&lease, &job, None, None, T0).await.unwrap();
        let state = match i % 3 {
            0 => {
                let model = if i % 2 == 0 { "m-a" } else { "m-b" };
                let valid = fixtures::valid(model);
                store.record_valid(&lease, &id, &valid, T0).await.unwrap()
            }
            1 => {
                let why = Why::new("duplicate_custom_id", "line 2: a duplicate");
                store.reject(&lease, &id, &why, &[], T0).await.unwrap();
                JobState::Rejected
            }
            _ => JobState::Validating,
        };
        made.push((id, state));
    }
    made
}

/// The stores to test on: a SQLite file in `sandbox`, and a PostgreSQL database when the test
/// server runs.
async fn backends(sandbox: &Sandbox) -> Vec<(&'static str, Store)> {
    let mut places = vec![("sqlite", DatabaseLocation::Sqlite(sandbox.db_path()))];
    if let Some(url) = crate::support::postgres::database().await {
        places.push(("postgres", DatabaseLocation::Postgres(url)));
    }
    let mut stores = Vec::new();
    for (backend, location) in places {
        let store = Store::open_at(&location, None, BUSY, Access::Migrate)
            .await
            .unwrap();
        stores.push((backend, store));
    }
    stores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pages_give_every_job_exactly_once_with_counts_and_filters_on_both_backends() {
    let sandbox = Sandbox::new();
    for (backend, store) in backends(&sandbox).await {
        let made = fill_many(&store, 300).await;
        let newest_first: Vec<String> = made.iter().rev().map(|(id, _)| id.clone()).collect();

        // The store's read: every job once, newest first, across pages of 7.
        let mut seen_ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .jobs_page(&Filter::default(), after.as_deref(), 7)
                .await
                .unwrap();
            assert!(page.len() <= 7, "{backend}");
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            seen_ids.extend(page.into_iter().map(|j| j.id));
        }
        assert_eq!(seen_ids, newest_first, "{backend}: the store's pages");

        // The same through the pages, following their links.
        let server = serve_pages(store.clone());
        let mut path = "/?limit=7".to_owned();
        let mut shown = Vec::new();
        let mut pages = 0;
        loop {
            let got = get(server.addr, &path).await;
            assert_eq!(got.status, 200, "{backend} {path}: {}", got.body);
            shown.extend(listed(&got.body));
            pages += 1;
            match older(&got.body) {
                Some(next) => path = next,
                None => break,
            }
        }
        assert_eq!(shown, newest_first, "{backend}: the pages' walk");
        assert_eq!(pages, 300_usize.div_ceil(7), "{backend}");

        // Counts per state, whatever the page shows.
        let first = get(server.addr, "/").await;
        assert_eq!(count(&first.body, "all"), 300, "{backend}");
        for (state, n) in [
            (JobState::Queued, 100),
            (JobState::Rejected, 100),
            (JobState::Validating, 100),
        ] {
            assert_eq!(count(&first.body, state.as_str()), n, "{backend} {state}");
        }
        assert_eq!(
            listed(&first.body).len(),
            50,
            "{backend}: 50 a page by default"
        );

        // Filters: a state, a part of the name, a glob, and both with paging.
        let expect = |keep: &dyn Fn(usize, &JobState) -> bool| -> Vec<String> {
            made.iter()
                .enumerate()
                .rev()
                .filter(|(i, (_, s))| keep(*i, s))
                .map(|(_, (id, _))| id.clone())
                .collect()
        };
        let walk = async |start: &str| {
            let mut path = start.to_owned();
            let mut ids = Vec::new();
            loop {
                let got = get(server.addr, &path).await;
                assert_eq!(got.status, 200, "{backend} {path}");
                ids.extend(listed(&got.body));
                match older(&got.body) {
                    Some(next) => path = next,
                    None => return ids,
                }
            }
        };
        assert_eq!(
            walk("/?state=rejected&limit=9").await,
            expect(&|_, s| *s == JobState::Rejected),
            "{backend}"
        );
        assert_eq!(
            walk("/?file=train&limit=11").await,
            expect(&|i, _| i % 2 == 1),
            "{backend}"
        );
        assert_eq!(
            walk("/?state=queued&file=eval-*.jsonl&limit=4").await,
            expect(&|i, s| i % 2 == 0 && *s == JobState::Queued),
            "{backend}"
        );
        assert_eq!(
            walk("/?model=m-a&limit=8").await,
            expect(&|i, s| i % 2 == 0 && *s == JobState::Queued),
            "{backend}"
        );
        assert_eq!(walk("/?file=nothing-like-it").await, Vec::<String>::new());
        let none = get(server.addr, "/?file=nothing-like-it").await;
        assert!(none.body.contains("No jobs match."), "{backend}");
        let bad = get(server.addr, "/?state=sleeping").await;
        assert_eq!(bad.status, 400, "{backend}");
        assert!(bad.body.contains("is not a job state"), "{backend}");
        // The model of a queued job is in its row.
        let queued = get(server.addr, "/?state=queued&limit=1").await;
        assert!(queued.body.contains("<td>m-a</td>") || queued.body.contains("<td>m-b</td>"));
        drop(server);
        store.close().await;
    }
}

#[tokio::test]
async fn a_hostile_file_name_and_reason_render_as_text_and_every_answer_carries_the_csp() {
    let sandbox = Sandbox::new();
    let store = Store::open_at(
        &DatabaseLocation::Sqlite(sandbox.db_path()),
        None,
        BUSY,
        Access::Migrate,
    )
    .await
    .unwrap();
    let lease = Lease::SOLE;
    let hostile = "<img src=x onerror=alert(1)>.jsonl";
    let claim = async |id: &str| {
        let path = format!("processing/{id}__x.jsonl");
        let job = NewJob {
            metadata: r#"{"note":"<b onmouseover=alert(4)>x</b>"}"#,
            ..fixtures::port_job(id, hostile, &path)
        };
        store.claim(&lease, &job, None, None, T0).await.unwrap();
    };
    let rejected = job_id(1);
    claim(&rejected).await;
    let why = Why::new("bad_line", "line 1: <script>alert(2)</script>");
    store
        .reject(&lease, &rejected, &why, &[], T0)
        .await
        .unwrap();
    let queued = job_id(2);
    claim(&queued).await;
    let valid = fixtures::valid("<svg onload=alert(3)>");
    store
        .record_valid(&lease, &queued, &valid, T0)
        .await
        .unwrap();

    let server = serve_pages(store.clone());
    for path in [
        "/".to_owned(),
        format!("/jobs/{rejected}"),
        format!("/jobs/{queued}"),
        "/?file=%3Cimg".to_owned(),
    ] {
        let got = get(server.addr, &path).await;
        assert_eq!(got.status, 200, "{path}");
        assert!(
            got.body
                .contains("&lt;img src=x onerror=alert(1)&gt;.jsonl"),
            "{path}: the name is not shown escaped:\n{}",
            got.body
        );
        // The page's own script, from this origin, is the one <script> there is.
        let outside = got
            .body
            .replacen("<script src=\"/script.js\" defer></script>", "", 1);
        for raw in ["<img", "<script", "<svg onload", "<b onmouseover"] {
            assert!(
                !outside.contains(raw),
                "{path}: {raw} raw in:\n{}",
                got.body
            );
        }
        assert!(!got.body.contains("onerror=alert(1)>"), "{path}");
    }
    let job = get(server.addr, &format!("/jobs/{rejected}")).await;
    assert!(job.body.contains("&lt;script&gt;alert(2)&lt;/script&gt;"));
    assert!(job.body.contains("Why it ended"));
    let list = get(server.addr, "/").await;
    assert!(list.body.contains("&lt;svg onload=alert(3)&gt;"));
    // The filter typed comes back in the form as text, not markup.
    let filtered = get(server.addr, "/?file=%22%3E%3Cscript%3E").await;
    assert!(filtered.body.contains("value=\"&quot;&gt;&lt;script&gt;\""));

    // Every answer of the pages, a missing job's and the stylesheet's too.
    for path in [
        "/",
        "/jobs/job_nothere",
        "/batches/99",
        STYLE,
        "/?state=bad",
    ] {
        let got = get(server.addr, path).await;
        assert_eq!(
            got.headers
                .get("content-security-policy")
                .map(|v| v.to_str().unwrap()),
            Some(CSP),
            "{path}"
        );
        assert_eq!(
            got.headers
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}"
        );
    }
    assert!(CSP.contains("default-src 'none'") && !CSP.contains("unsafe"));
    let style = get(server.addr, STYLE).await;
    assert!(style.body.contains("prefers-color-scheme: dark"));
    assert_eq!(get(server.addr, "/jobs/job_nothere").await.status, 404);
    assert_eq!(get(server.addr, "/batches/99").await.status, 404);
    // One script, this origin's file, and no inline script or style the CSP would refuse.
    for page in [&list.body, &job.body] {
        assert_eq!(
            page.matches("<script").count(),
            page.matches("<script src=\"/script.js\" defer></script>")
                .count(),
        );
        assert!(page.contains("<script src=\"/script.js\""));
        assert!(!page.contains("style="));
    }
    let script = get(server.addr, "/script.js").await;
    assert_eq!(script.status, 200);
    assert!(script.body.contains("data-refresh") || script.body.contains("dataset.refresh"));
    store.close().await;
}

const STYLE: &str = "/style.css";

/// The rects of a page's timelines: (status, milliseconds, x, width), in order.
fn segments(body: &str) -> Vec<(String, u64, f64, f64)> {
    body.split("<rect class=\"seg ")
        .skip(1)
        .map(|rect| {
            let attr = |name: &str| {
                let start = rect.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                rect[start..].split('"').next().unwrap().to_owned()
            };
            (
                attr("data-status"),
                attr("data-ms").parse().unwrap(),
                attr("x").parse().unwrap(),
                attr("width").parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_batch_timeline_has_one_segment_per_history_row_as_wide_as_that_status_lasted() {
    use batchwatch_store_sqlite::batches;
    let sandbox = Sandbox::new();
    let writer = fixtures::open(&sandbox.db_path()).await;
    let id = job_id(7);
    fixtures::new_job(&writer, &id, "timed.jsonl", 10).await;
    let batch = fixtures::submission(&writer, &id, 0, 1, 10).await;
    // 1 minute validating, 3 in progress, 1 finalizing, then completed.
    let rows = [
        ("10:00:00", "validating", (0, 0, 0)),
        ("10:01:00", "in_progress", (10, 2, 0)),
        ("10:04:00", "finalizing", (10, 9, 1)),
        ("10:05:00", "completed", (10, 9, 1)),
    ];
    for (at, status, counts) in rows {
        let mut tx = writer.begin().await.unwrap();
        let at = format!("2026-11-22T{at}.000Z");
        batches::record_observation(
            &mut tx,
            batch,
            &seen("batch_timed", status, Some(counts)),
            &at,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let store = Store::open(&sandbox.db_path(), BUSY, Access::ReadOnly)
        .await
        .unwrap();
    let history = store.history(batch).await.unwrap();
    assert_eq!(history.len(), 4);

    let server = serve_pages(store.clone());
    for path in [
        format!("/jobs/{id}"),
        format!("/batches/{batch}"),
        "/batches/batch_timed".into(),
    ] {
        let got = get(server.addr, &path).await;
        assert_eq!(got.status, 200, "{path}");
        let drawn = segments(&got.body);
        let statuses: Vec<&str> = drawn.iter().map(|s| s.0.as_str()).collect();
        let rows: Vec<&str> = history.iter().map(|h| h.status.as_str()).collect();
        assert_eq!(
            statuses, rows,
            "{path}: one segment per history row, in order"
        );
        let ms: Vec<u64> = drawn.iter().map(|s| s.1).collect();
        assert_eq!(ms, [60_000, 180_000, 60_000, 0], "{path}");
        // The timed ones share the bar but the final cap, in proportion to how long they lasted.
        let room = batchwatch::pages::WIDTH - batchwatch::pages::CAP;
        for (status, ms, _, width) in &drawn[..3] {
            let expected = room * *ms as f64 / 300_000.0;
            assert!(
                (width - expected).abs() < 0.01,
                "{path} {status}: {width} vs {expected}"
            );
        }
        let (_, _, x, width) = drawn[3];
        assert!((width - batchwatch::pages::CAP).abs() < 0.01);
        assert!(
            (x + width - batchwatch::pages::WIDTH).abs() < 0.01,
            "the cap ends the bar"
        );
        // Each starts where the one before ends.
        for pair in drawn.windows(2) {
            assert!((pair[0].2 + pair[0].3 - pair[1].2).abs() < 0.01, "{path}");
        }
    }
    let job = get(server.addr, &format!("/jobs/{id}")).await;
    assert!(job.body.contains("9/10, 1 failed"), "the batch's progress");
    store.close().await;
    writer.close().await;
}

/// A file only its owner can read, holding `token`.
fn token_file(sandbox: &Sandbox, token: &str) -> std::path::PathBuf {
    let path = sandbox.path().join("pages-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Pages asked for (`metrics.pages = true`) beyond loopback without a token file: the start
/// is refused (78, naming the keys) before the database is opened, and check-config says the
/// same. Without `metrics.pages`, the same address serves the monitoring paths alone and the
/// start says why there are no pages: a configuration written for a remote Prometheus before
/// the pages existed starts as it did.
#[tokio::test]
async fn pages_asked_for_beyond_loopback_without_a_token_file_stop_the_start_and_unasked_are_left_off()
 {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[metrics]\nlisten = \"0.0.0.0:0\"\npages = true\n",
    );
    let mut daemon = env.spawn_refused();
    let (status, _) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(78), "{}", daemon.seen.join("\n"));
    let said = daemon.seen.join("\n");
    assert!(said.contains("`metrics.listen`"), "{said}");
    assert!(said.contains("metrics.pages_token_file"), "{said}");
    assert!(!env.db.exists(), "refused before the database was opened");
    let check = |config: &std::path::Path| {
        output_within(
            command(Some(config))
                .arg("check-config")
                .env("OPENAI_API_KEY", KEY),
            Duration::from_secs(60),
        )
    };
    assert_eq!(check(&env.config).status.code(), Some(78));
    for pages in ["false", "\"unset\""] {
        let line = match pages {
            "false" => "pages = false\n",
            _ => "",
        };
        let env = Env::new(
            &sim.handle.base_url(),
            &format!("[metrics]\nlisten = \"0.0.0.0:0\"\n{line}"),
        );
        let out = check(&env.config);
        assert_eq!(
            out.status.code(),
            Some(0),
            "pages {pages}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut daemon = env.spawn();
        let bound = crate::metrics::endpoint_addr(&mut daemon);
        let addr: SocketAddr = format!("127.0.0.1:{}", bound.port()).parse().unwrap();
        let (page, metrics) = (get(addr, "/").await, get(addr, "/metrics").await);
        assert_eq!((page.status, metrics.status), (404, 200), "pages {pages}");
        daemon.drain();
        let warned = daemon
            .seen
            .iter()
            .any(|l| l.contains("the status pages are not served"));
        assert_eq!(
            warned,
            line.is_empty(),
            "pages {pages}: {}",
            daemon.seen.join("\n")
        );
        env.stop(daemon);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_file_every_page_needs_the_bearer_token_and_nothing_secret_is_shown() {
    const TOKEN: &str = "pages-Token-6d1f0a9e";
    let sim = spawn_sim(quick_sim()).await;
    let sandbox = Sandbox::new();
    let token = token_file(&sandbox, TOKEN);
    let env = Env::new(
        &sim.handle.base_url(),
        &format!(
            "[metrics]\nlisten = \"0.0.0.0:0\"\npages_token_file = {:?}\n",
            token.display().to_string()
        ),
    );
    let mut daemon = env.spawn();
    let bound = crate::metrics::endpoint_addr(&mut daemon);
    let addr: SocketAddr = format!("127.0.0.1:{}", bound.port()).parse().unwrap();
    env.drop_file(
        "tokened.jsonl",
        requests("hushhush", 3, "gpt-4o-mini").as_bytes(),
    );
    let jobs = env
        .wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    let job = &jobs[0].id;

    for path in ["/".to_owned(), format!("/jobs/{job}"), STYLE.to_owned()] {
        for wrong in [None, Some("pages-Token-6d1f0a9"), Some("nope")] {
            let got = get_with(addr, &path, wrong).await;
            assert_eq!(got.status, 401, "{path} with {wrong:?}");
            assert!(got.headers.get("www-authenticate").is_some());
            assert!(got.headers.get("content-security-policy").is_some());
            assert!(!got.body.contains(TOKEN));
        }
        let got = get_with(addr, &path, Some(TOKEN)).await;
        assert_eq!(got.status, 200, "{path}");
        // No key, no token, no request line and no result line on any page.
        for secret in [KEY, TOKEN, "hushhush", "question 0"] {
            assert!(!got.body.contains(secret), "{path} shows {secret:?}");
        }
    }
    let page = get_with(addr, &format!("/jobs/{job}"), Some(TOKEN)).await;
    assert!(page.body.contains("tokened.jsonl") && page.body.contains("completed"));
    assert!(
        page.body.contains(&format!("results/{job}")),
        "where the results are"
    );
    // A query token is not a way in: the token travels in the header only.
    let query = get(addr, &format!("/?token={TOKEN}")).await;
    assert_eq!(query.status, 401);
    // The monitoring paths are as they were: no token asked.
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/metrics").await.status, 200);

    let log = env.stop(daemon);
    assert!(
        !log.iter().any(|l| l.contains(TOKEN)),
        "the token appeared in the log"
    );
}

#[tokio::test]
async fn serve_shows_the_pages_of_a_database_it_opens_read_only() {
    let sandbox = Sandbox::new();
    let writer = fixtures::open(&sandbox.db_path()).await;
    let filled = fixtures::fill(&writer).await;
    writer.close().await;
    let db = sandbox.db_path().display().to_string();
    let before = std::fs::read(sandbox.db_path()).unwrap();

    let mut serve = Running::spawn({
        let mut cmd = command(None);
        cmd.args(["serve", "--database", &db, "--listen", "127.0.0.1:0"]);
        cmd
    });
    let line = serve.wait_for_line("status pages listening", Duration::from_secs(30));
    let addr: SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let list = get(addr, "/").await;
    assert_eq!(list.status, 200);
    assert_eq!(count(&list.body, "all"), 4);
    for id in [
        &filled.completed,
        &filled.running,
        &filled.rejected,
        &filled.queued,
    ] {
        assert!(listed(&list.body).contains(id), "{id}");
    }
    let job = get(addr, &format!("/jobs/{}", filled.completed)).await;
    assert_eq!(job.status, 200);
    assert!(job.body.contains(&filled.completed_remote));
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(
        get(addr, "/metrics").await.status,
        404,
        "the daemon's, not serve's"
    );
    serve.signal(libc::SIGTERM);
    let (status, _) = serve.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", serve.seen.join("\n"));
    assert_eq!(
        std::fs::read(sandbox.db_path()).unwrap(),
        before,
        "nothing written"
    );

    // A database that is not there is not made; an address beyond loopback needs a token.
    let missing = sandbox.path().join("missing.db");
    let out = output_within(
        command(None).args(["serve", "--database", &missing.display().to_string()]),
        Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!missing.exists());
    let out = output_within(
        command(None).args(["serve", "--database", &db, "--listen", "0.0.0.0:0"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(78));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("`--listen`") && said.contains("pages_token_file"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instances_page_shows_each_daemon_s_lease_and_the_leader_or_that_sqlite_has_one() {
    use batchwatch::store::ops::lease::Instance;
    let sandbox = Sandbox::new();
    for (backend, store) in backends(&sandbox).await {
        let server = serve_pages(store.clone());
        let page = get(server.addr, "/instances").await;
        assert_eq!(page.status, 200, "{backend}");
        if backend == "sqlite" {
            assert!(
                page.body
                    .contains("One daemon writes a SQLite database, behind its lock file"),
                "{}",
                page.body
            );
            continue;
        }
        assert!(
            page.body.contains("No daemon has registered"),
            "{}",
            page.body
        );
        let who = |name: &str, pid| Instance {
            name: name.into(),
            host: "<b>host</b>".into(),
            pid,
            pid_namespace: "boot pid:[1]".into(),
        };
        let ttl = Duration::from_secs(60);
        let now = batchwatch::clock::format(batchwatch::clock::Timestamp::now());
        let first = store.register(&who("alpha", 11), ttl, &now).await.unwrap();
        store.register(&who("beta", 12), ttl, &now).await.unwrap();
        assert!(store.elect(&first, Duration::from_secs(15)).await.unwrap());
        let page = get(server.addr, "/instances").await;
        let rows: Vec<&str> = page.body.split("<tr>").skip(2).collect();
        assert_eq!(rows.len(), 2, "{}", page.body);
        assert!(
            rows[0].contains("alpha") && rows[0].contains(">leader<"),
            "{}",
            rows[0]
        );
        assert!(
            rows[1].contains("beta") && !rows[1].contains(">leader<"),
            "{}",
            rows[1]
        );
        for row in rows {
            assert!(row.contains(">live<"), "{row}");
            assert!(
                row.contains("&lt;b&gt;host&lt;/b&gt;"),
                "the host name escaped: {row}"
            );
        }
        drop(server);
        store.close().await;
    }
}
