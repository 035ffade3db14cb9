//! The status pages in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol (chromiumoxide without its fetcher: the browser is the system's), against a daemon
//! that serves its pages while it runs jobs on the simulator. What only a browser shows: every
//! page loads under its CSP with no console error, no exception and no failed request; a link
//! leads to a job; the timeline's drawn segments match the history rows; a hostile file name is
//! text and runs nothing; a phone-sized page does not overflow; dark mode; times in the
//! browser's zone; the live refresh brings a change in without a reload and keeps the scroll
//! position. A screenshot of each page goes to `target/tmp/browser/` (to look at, not compared).
//!
//! Skips with a reason where Chromium is missing; fails under `BATCHWATCH_REQUIRE_BROWSER=1`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::store::prelude::*;
use chromiumoxide::cdp::IntoEventKind;
use chromiumoxide::cdp::browser_protocol::emulation::{
    MediaFeature, SetDeviceMetricsOverrideParams,
};
use chromiumoxide::cdp::browser_protocol::log::{EventEntryAdded, LogEntryLevel};
use chromiumoxide::cdp::browser_protocol::network::{EventLoadingFailed, EventResponseReceived};
use chromiumoxide::cdp::browser_protocol::page::EventJavascriptDialogOpening;
use chromiumoxide::cdp::js_protocol::runtime::{
    ConsoleApiCalledType, EventConsoleApiCalled, EventExceptionThrown,
};
use chromiumoxide::listeners::EventStream;
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::{Browser, BrowserConfig, Page};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::support::daemon::{Env, requests, slow_sim};
use crate::support::poll_until;
use crate::support::sim::spawn_sim;

/// Where Debian's package puts the browser (`BATCHWATCH_CHROMIUM` names another).
const CHROMIUM: &str = "/usr/bin/chromium";

/// A file name that would run a script if it reached the HTML unescaped.
const HOSTILE: &str = "<img src=x onerror=alert(1)>.jsonl";

/// The browser, or why the test skips: `None` with the reason printed, or a failure when
/// `BATCHWATCH_REQUIRE_BROWSER` is set.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("BATCHWATCH_CHROMIUM").map_or(CHROMIUM.into(), PathBuf::from);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("BATCHWATCH_REQUIRE_BROWSER").is_none(),
        "BATCHWATCH_REQUIRE_BROWSER is set, but Chromium is not installed at {}",
        path.display()
    );
    eprintln!(
        "skipped: Chromium is not installed at {} (Debian/Ubuntu: apt-get install chromium)",
        path.display()
    );
    None
}

/// A headless Chromium with a profile of its own, and the task that reads its messages.
struct Chromium {
    browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    async fn launch(path: &Path) -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let mut config = BrowserConfig::builder()
            .chrome_executable(path)
            .new_headless_mode()
            .window_size(1280, 900)
            .viewport(None)
            .user_data_dir(profile.path())
            .arg("--disable-gpu");
        // Chromium's sandbox refuses root (CI runs as root).
        if unsafe { libc::geteuid() } == 0 {
            config = config.no_sandbox();
        }
        let (browser, mut handler) = Browser::launch(config.build().unwrap())
            .await
            .expect("Chromium starts");
        let handler = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Chromium {
            browser,
            handler,
            _profile: profile,
        }
    }

    async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
    }
}

/// What went wrong on a page, gathered as it happens.
type Problems = Arc<Mutex<Vec<String>>>;

/// A page whose console errors and warnings, uncaught exceptions, log entries of level
/// warning or error (where Chromium reports CSP violations), failed requests, answers of 400
/// or more and dialogs (an injected `alert`) are gathered from the moment it opens.
struct Watched {
    page: Page,
    problems: Problems,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Gathers what `describe` makes of each event of `events` into `problems`.
fn gather<T>(
    mut events: EventStream<T>,
    problems: &Problems,
    describe: fn(&T) -> Option<String>,
) -> tokio::task::JoinHandle<()>
where
    T: IntoEventKind + Unpin + Send + Sync + 'static,
{
    let problems = problems.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Some(problem) = describe(&event) {
                problems.lock().unwrap().push(problem);
            }
        }
    })
}

impl Watched {
    async fn open(chromium: &Chromium) -> Watched {
        let page = chromium.browser.new_page("about:blank").await.unwrap();
        let problems: Problems = Arc::default();
        let tasks = vec![
            gather(
                page.event_listener::<EventConsoleApiCalled>()
                    .await
                    .unwrap(),
                &problems,
                |e| {
                    matches!(
                        e.r#type,
                        ConsoleApiCalledType::Error | ConsoleApiCalledType::Warning
                    )
                    .then(|| format!("console {:?}: {:?}", e.r#type, e.args))
                },
            ),
            gather(
                page.event_listener::<EventExceptionThrown>().await.unwrap(),
                &problems,
                |e| Some(format!("exception: {:?}", e.exception_details)),
            ),
            gather(
                page.event_listener::<EventEntryAdded>().await.unwrap(),
                &problems,
                |e| {
                    matches!(e.entry.level, LogEntryLevel::Warning | LogEntryLevel::Error)
                        .then(|| format!("log {:?}: {}", e.entry.level, e.entry.text))
                },
            ),
            gather(
                page.event_listener::<EventLoadingFailed>().await.unwrap(),
                &problems,
                |e| Some(format!("request failed: {} {:?}", e.error_text, e.r#type)),
            ),
            gather(
                page.event_listener::<EventResponseReceived>()
                    .await
                    .unwrap(),
                &problems,
                |e| {
                    (e.response.status >= 400)
                        .then(|| format!("{} answered {}", e.response.url, e.response.status))
                },
            ),
            gather(
                page.event_listener::<EventJavascriptDialogOpening>()
                    .await
                    .unwrap(),
                &problems,
                |e| Some(format!("a dialog opened: {}", e.message)),
            ),
        ];
        Watched {
            page,
            problems,
            tasks,
        }
    }

    async fn goto(&self, url: &str) {
        self.page.goto(url).await.unwrap();
        self.page.wait_for_navigation().await.unwrap();
    }

    /// Clicks the element `selector` finds and waits until the page is at `to` and loaded.
    async fn click(&self, selector: &str, to: &str) {
        self.page
            .find_element(selector)
            .await
            .unwrap_or_else(|e| panic!("{selector}: {e}"))
            .click()
            .await
            .unwrap();
        // While the next page loads, its context may not be there yet: asked again.
        let arrived = poll_until(Duration::from_secs(10), async || {
            let at = self
                .page
                .evaluate("[window.location.href, document.readyState]")
                .await
                .ok()
                .and_then(|v| v.into_value::<(String, String)>().ok());
            let done = at
                .as_ref()
                .is_some_and(|(href, ready)| href == to && ready == "complete");
            (done, at)
        })
        .await;
        arrived.unwrap_or_else(|at| panic!("clicked {selector}, expected {to}, at {at:?}"));
    }

    /// The value of a script run in the page.
    async fn eval<T: DeserializeOwned>(&self, script: &str) -> T {
        self.page
            .evaluate(script)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
            .into_value()
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Makes the page a phone's screen, 390 by 640 CSS pixels (a full-page screenshot ends
    /// it).
    async fn phone(&self) {
        self.page
            .execute(SetDeviceMetricsOverrideParams::new(390, 640, 2.0, true))
            .await
            .unwrap();
    }

    /// Saves the whole page as `target/tmp/browser/NAME.png`.
    async fn screenshot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let params = ScreenshotParams::builder().full_page(true).build();
        let png = self.page.save_screenshot(params, &path).await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}: a PNG");
        eprintln!("screenshot: {}", path.display());
    }

    /// Everything that went wrong on the page so far.
    fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    fn close(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The drawn segments of the first timeline on the page: status, milliseconds, and the share
/// of the bar's rendered width each takes.
const DRAWN_TIMELINE: &str = r#"(() => {
    const svg = document.querySelector("svg.timeline");
    const bar = svg.getBoundingClientRect().width;
    return Array.from(svg.querySelectorAll("rect.seg"), r => [
        r.dataset.status, Number(r.dataset.ms), r.getBoundingClientRect().width / bar,
    ]);
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_in_chromium_load_cleanly_draw_the_history_escape_a_hostile_name_and_refresh_live()
 {
    let Some(path) = chromium() else { return };
    // Batches stay in progress until the test steps them on.
    let sim = spawn_sim(slow_sim(600.0)).await;
    let env = Env::new(
        &sim.handle.base_url(),
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut daemon = env.spawn();
    let addr = crate::metrics::endpoint_addr(&mut daemon);
    let url = |path: &str| format!("http://{addr}{path}");
    env.drop_file("good.jsonl", requests("good", 3, "gpt-4o-mini").as_bytes());
    env.drop_file(HOSTILE, requests("hostile", 2, "gpt-4o-mini").as_bytes());
    env.drop_file("broken.jsonl", b"this is not JSON\n");
    env.drop_file("still.jsonl", requests("still", 2, "gpt-4o").as_bytes());

    let running = poll_until(Duration::from_secs(60), async || {
        let jobs = env.jobs().await;
        let states: Vec<JobState> = jobs.iter().map(|j| j.state).collect();
        let ready = jobs.len() == 4
            && states.iter().filter(|s| **s == JobState::Running).count() == 3
            && states.contains(&JobState::Rejected);
        (ready, jobs)
    })
    .await
    .unwrap_or_else(|jobs| panic!("not three running and one rejected: {jobs:?}"));
    let job = |name: &str| {
        running
            .iter()
            .find(|j| j.file_name == name)
            .unwrap_or_else(|| panic!("no job for {name}"))
            .id
            .clone()
    };
    let (good, hostile, still) = (job("good.jsonl"), job(HOSTILE), job("still.jsonl"));
    let remote = async |job: &str| -> String {
        let submissions = env.submissions(job).await;
        submissions[0].remote_id.clone().expect("created")
    };
    let step = async |jobs: &[&str]| {
        let mut ids = Vec::new();
        for job in jobs {
            ids.push(remote(job).await);
        }
        sim.admin_json("/batches/step", Some(&json!({ "ids": ids })))
            .await;
    };
    step(&[&good, &hostile]).await;
    poll_until(Duration::from_secs(60), async || {
        let jobs = env.jobs().await;
        let done = jobs
            .iter()
            .filter(|j| j.state == JobState::Completed)
            .count();
        (done == 2, jobs)
    })
    .await
    .unwrap_or_else(|jobs| panic!("good and hostile did not complete: {jobs:?}"));

    let chromium = Chromium::launch(&path).await;
    let page = Watched::open(&chromium).await;

    // The jobs: four rows, counts per state, the hostile name as text (no <img> made, no
    // dialog, no request for "x"), the script running (its switch shows).
    page.goto(&url("/")).await;
    assert_eq!(
        page.eval::<String>("document.title").await,
        "Jobs · batchwatch"
    );
    let names: Vec<String> = page
        .eval("Array.from(document.querySelectorAll('td.file a'), a => a.textContent)")
        .await;
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [HOSTILE, "broken.jsonl", "good.jsonl", "still.jsonl"],
        "the rows"
    );
    let counts: Vec<String> = page
        .eval("Array.from(document.querySelectorAll('.counts a'), a => a.textContent.trim())")
        .await;
    for expected in ["4 all", "1 rejected", "1 running", "2 completed"] {
        assert!(
            counts.iter().any(|c| c == expected),
            "{expected}: {counts:?}"
        );
    }
    assert_eq!(page.eval::<u32>("document.images.length").await, 0);
    assert!(
        !page
            .eval::<bool>("document.querySelector('.live').hidden")
            .await
    );
    page.screenshot("jobs").await;

    // A link to a job, followed by a click.
    page.click(
        &format!("a[href='/jobs/{good}']"),
        &url(&format!("/jobs/{good}")),
    )
    .await;

    // Its timeline: one segment per run of a status in the history rows, each as wide on the
    // screen as its share of the time (the final status a cap).
    let store = env.store().await;
    let batch = &store.submissions_of(&good).await.unwrap()[0];
    let history = store.history(batch.id).await.unwrap();
    let mut runs: Vec<(&str, batchwatch::clock::Timestamp)> = Vec::new();
    for row in &history {
        if runs.last().is_none_or(|(s, _)| *s != row.status.as_str()) {
            let at = batchwatch::clock::parse(&row.observed_at).unwrap();
            runs.push((row.status.as_str(), at));
        }
    }
    assert_eq!(runs.last().map(|r| r.0), Some("completed"), "{history:?}");
    let drawn: Vec<(String, u64, f64)> = page.eval(DRAWN_TIMELINE).await;
    let statuses: Vec<&str> = drawn.iter().map(|d| d.0.as_str()).collect();
    let expected: Vec<&str> = runs.iter().map(|r| r.0).collect();
    assert_eq!(statuses, expected, "one segment per status run");
    let lasted: Vec<u64> = runs
        .windows(2)
        .map(|w| batchwatch::clock::between(w[0].1, w[1].1).as_millis() as u64)
        .collect();
    let total: u64 = lasted.iter().sum();
    let cap = batchwatch::pages::CAP / batchwatch::pages::WIDTH;
    for (i, (status, ms, share)) in drawn.iter().enumerate() {
        match lasted.get(i) {
            Some(expected_ms) => {
                assert_eq!(ms, expected_ms, "{status}");
                let expected_share = if total == 0 {
                    (1.0 - cap) / lasted.len() as f64
                } else {
                    (1.0 - cap) * *ms as f64 / total as f64
                };
                assert!(
                    (share - expected_share).abs() < 0.005,
                    "{status}: {share} of the bar drawn, {expected_share} expected"
                );
            }
            None => assert!((share - cap).abs() < 0.005, "the final cap: {share}"),
        }
    }
    let counted = history
        .iter()
        .filter(|h| h.request_total.is_some_and(|t| t > 0))
        .count();
    let lines: u32 = page
        .eval("document.querySelectorAll('svg.counts polyline').length")
        .await;
    assert_eq!(lines, if counted >= 2 { 2 } else { 0 }, "{history:?}");
    page.screenshot("job").await;

    // The batch's own page, from the job's.
    page.click(
        "article.batch h3 a",
        &url(&format!("/batches/{}", batch.id)),
    )
    .await;
    let heading: String = page
        .eval("document.querySelector('article.batch h3').textContent")
        .await;
    assert!(
        heading.contains(batch.remote_id.as_deref().unwrap()),
        "{heading}"
    );
    page.screenshot("batch").await;

    // The hostile job's page: its name is the heading's text, and nothing ran.
    page.goto(&url(&format!("/jobs/{hostile}"))).await;
    let h1: String = page
        .eval("document.querySelector('h1').firstChild.textContent")
        .await;
    assert_eq!(h1.trim(), HOSTILE);
    assert_eq!(page.eval::<u32>("document.images.length").await, 0);
    page.screenshot("hostile-job").await;

    page.goto(&url("/instances")).await;
    let said: String = page
        .eval("document.querySelector('main').textContent")
        .await;
    assert!(
        said.contains("One daemon writes a SQLite database"),
        "{said}"
    );
    page.screenshot("instances").await;

    // Dark, from the browser's preference.
    page.page
        .emulate_media_features(vec![MediaFeature::new("prefers-color-scheme", "dark")])
        .await
        .unwrap();
    page.goto(&url("/")).await;
    let background: String = page
        .eval("getComputedStyle(document.body).backgroundColor")
        .await;
    assert_eq!(background, "rgb(21, 25, 29)", "the dark background");
    page.screenshot("jobs-dark").await;
    page.page
        .emulate_media_features(vec![MediaFeature::new("prefers-color-scheme", "light")])
        .await
        .unwrap();

    // Times in the browser's zone, the UTC kept in the title.
    page.page.emulate_timezone("Asia/Tokyo").await.unwrap();
    page.goto(&url("/")).await;
    let (shown, title): (String, String) = page
        .eval("(() => { const t = document.querySelector('.asof'); return [t.textContent, t.title]; })()")
        .await;
    assert!(shown.ends_with("GMT+9"), "{shown}");
    assert!(title.ends_with(" UTC"), "{title}");

    // A phone: nothing wider than the screen (the jobs table scrolls in its own box).
    for (path, name) in [
        ("/".to_owned(), "jobs-phone"),
        (format!("/jobs/{good}"), "job-phone"),
    ] {
        page.phone().await;
        page.goto(&url(&path)).await;
        let (width, widest): (f64, Vec<String>) = page
            .eval(
                "[window.innerWidth, Array.from(document.querySelectorAll('body *'))
                   .filter(e => e.getBoundingClientRect().right > 391)
                   .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))]",
            )
            .await;
        assert_eq!(width, 390.0, "{path}: wider than the phone: {widest:?}");
        let (wide, screen): (f64, f64) = page
            .eval("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            .await;
        assert!(
            wide <= screen,
            "{path}: {wide} px wide on a {screen} px screen"
        );
        page.screenshot(name).await;
    }

    // Live: scrolled halfway down on the phone, the page takes in the last job's end without a
    // reload and stays where it was scrolled to.
    page.phone().await;
    page.goto(&url("/")).await;
    let (scrolled, tall, screen): (f64, f64, f64) = page
        .eval(
            "window.scrollTo(0, (document.documentElement.scrollHeight - window.innerHeight) / 2); \
               window.__same = true; \
               [window.scrollY, document.documentElement.scrollHeight, window.innerHeight]",
        )
        .await;
    assert!(
        scrolled > 0.0,
        "the page ({tall} px) is not taller than the phone's screen ({screen} px)"
    );
    step(&[&still]).await;
    let refreshed = poll_until(Duration::from_secs(60), async || {
        let counts: Vec<String> = page
            .eval("Array.from(document.querySelectorAll('.counts a'), a => a.textContent.trim())")
            .await;
        (counts.iter().any(|c| c == "3 completed"), counts)
    })
    .await;
    refreshed.unwrap_or_else(|counts| panic!("the page did not refresh: {counts:?}"));
    let (same, y): (bool, f64) = page.eval("[window.__same === true, window.scrollY]").await;
    assert!(same, "the page was reloaded, not refreshed in place");
    assert_eq!(y, scrolled, "the scroll position");

    let problems = page.problems();
    assert!(problems.is_empty(), "{problems:#?}");
    page.close();
    chromium.close().await;
    store.close().await;
    env.stop(daemon);
}
