//! The monitoring endpoint's limits: a flood of slow connections (a slowloris) neither starves
//! the daemon of file descriptors nor holds the endpoint, `/readyz` while every round of the
//! main loop fails, and a bounded number of series for the models of users' files.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use batchwatch::metrics::server::{HEADER_TIMEOUT, LOOP_STALE, MAX_CONNECTIONS};
use batchwatch::store::prelude::*;

use crate::metrics::{endpoint_addr, get, samples, sockets_of, spawn_observed};
use crate::support::daemon::{Env, quick_sim, requests};
use crate::support::process::Running;
use crate::support::sim::{http_client, spawn_sim};
use crate::support::tmpfs::Tmpfs;
use crate::support::wait_until;

const OBSERVED: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// A slowloris: `n` connections to `addr` that each send a request line, then one more header
/// line every second, and never the blank line that ends the headers. A connection the
/// endpoint closes is opened again at once.
struct Slowloris {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Slowloris {
    fn start(addr: SocketAddr, n: usize) -> Slowloris {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let open = move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").ok()?;
            Some(s)
        };
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| open()).collect();
            let mut reopened = 0;
            while !stopped.load(Ordering::Relaxed) {
                for conn in &mut conns {
                    let alive = conn
                        .as_mut()
                        .is_some_and(|s| s.write_all(b"X-Slow: 1\r\n").is_ok());
                    if !alive {
                        *conn = open();
                        reopened += 1;
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            reopened
        });
        Slowloris {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; returns how many connections it opened again after the endpoint closed them.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Scrapes `/metrics` `times` times during a flood: each gets an answer (200 or 503) or a
/// reset within two seconds, never a hang; returns the statuses seen.
async fn scrapes_answered_fast(addr: SocketAddr, times: usize) -> Vec<String> {
    let client = http_client();
    let mut seen = Vec::new();
    for _ in 0..times {
        let start = Instant::now();
        let sent = client
            .get(format!("http://{addr}/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let took = start.elapsed();
        let outcome = match sent {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) => {
                assert!(!e.is_timeout(), "a scrape hung for {took:?}: {e}");
                "reset".to_owned()
            }
        };
        assert!(
            took < Duration::from_secs(2),
            "a scrape took {took:?} ({outcome})"
        );
        seen.push(outcome);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    seen
}

/// Drops `n` files during a flood and waits for every job to finish; then checks that the
/// daemon never ran out of file descriptors.
async fn files_go_through(env: &Env, daemon: &mut Running, n: usize) {
    for i in 0..n {
        let content = requests(&format!("flood-{i}"), 3, "gpt-4o-mini");
        env.drop_file(&format!("flood-{i}.jsonl"), content.as_bytes());
    }
    let jobs = env.wait_finished(n, Duration::from_secs(90), daemon).await;
    assert!(
        jobs.iter()
            .all(|j| j.state == batchwatch::model::JobState::Completed),
        "{:?}",
        jobs.iter()
            .map(|j| (j.state, &j.reason))
            .collect::<Vec<_>>()
    );
    daemon.drain();
    let starved: Vec<&String> = daemon
        .seen
        .iter()
        .filter(|l| l.contains("Too many open files"))
        .collect();
    assert!(starved.is_empty(), "{starved:#?}");
}

/// The endpoint's established connections, as the daemon holds them.
fn endpoint_connections(daemon: &Running, addr: SocketAddr) -> usize {
    let port = format!(":{:04X}", addr.port());
    // st 01 is ESTABLISHED; the local address is the second field.
    sockets_of(daemon.child.id(), |fields| {
        fields[3] == "01" && fields[1].ends_with(&port)
    })
    .len()
}

/// systemd's default soft limit is 1,024, and the flood was 1,100 connections; here
/// the same at a quarter of the scale: 300 slow connections against a limit of 256. The
/// endpoint holds at most [`MAX_CONNECTIONS`] of them, closes each whose headers do not arrive
/// within [`HEADER_TIMEOUT`], answers or refuses a scrape at once, and files go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slowloris_is_capped_and_timed_out_while_scrapes_are_answered_and_files_go_through() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), OBSERVED);
    let mut daemon = env.spawn_with_open_files(256, 256);
    let addr = endpoint_addr(&mut daemon);
    assert_eq!(get(addr, "/metrics").await.0, 200);

    // Headers that never end, on a connection the endpoint took before the flood.
    let mut lone = TcpStream::connect(addr).unwrap();
    lone.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let lone_since = Instant::now();

    let flood = Slowloris::start(addr, 300);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut most = 0;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        most = most.max(endpoint_connections(&daemon, addr));
        statuses.extend(scrapes_answered_fast(addr, 3).await);
    }
    files_go_through(&env, &mut daemon, 5).await;
    most = most.max(endpoint_connections(&daemon, addr));
    assert!(
        most <= MAX_CONNECTIONS + 1,
        "the endpoint held {most} connections at once"
    );

    lone.set_read_timeout(Some(HEADER_TIMEOUT + Duration::from_secs(10)))
        .unwrap();
    let read = lone.read(&mut [0; 256]);
    let after = lone_since.elapsed();
    assert!(
        matches!(&read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection with unfinished headers is still open after {after:?}: {read:?}"
    );
    assert!(
        after >= HEADER_TIMEOUT - Duration::from_millis(500)
            && after < HEADER_TIMEOUT + Duration::from_secs(5),
        "closed after {after:?}"
    );

    let reopened = flood.stop();
    assert!(
        reopened > 300,
        "the endpoint closed only {reopened} of the slow connections"
    );
    println!("scrapes during the flood: {statuses:?}; slow connections reopened: {reopened}");
    // The endpoint frees a slow connection once it reads the client's close.
    wait_until(
        "a scrape answered after the flood",
        Duration::from_secs(5),
        async || {
            let status = get(addr, "/metrics").await.0;
            (status == 200, status)
        },
    )
    .await;
    env.stop(daemon);
}

/// The soft limit of open files (systemd's default is 1,024) is raised to the hard one at
/// start, as the daemon's and the endpoint's needs share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batchwatch_run_raises_its_soft_open_file_limit_to_the_hard_limit() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(&sim.handle.base_url(), "");
    let mut daemon = env.spawn_with_open_files(256, 4096);
    daemon.wait_for_line(
        "raised the open-file limit from=256 to=4096",
        Duration::from_secs(10),
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>(),
        ["Max", "open", "files", "4096", "4096", "files"]
    );
    env.stop(daemon);
}

/// A limit so low that the endpoint's maximum would take what the daemon needs: 300 slow
/// connections against 72 descriptors, of which the idle daemon holds about 26, with
/// `limits.concurrency = 2` (a reserve of 32). The endpoint keeps the reserve free, so 20 files
/// go through without one "Too many open files"; with the maximum alone, downloads and scans
/// fail for want of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_a_low_open_file_limit_the_endpoint_leaves_the_daemon_its_reserve() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(
        &sim.handle.base_url(),
        &format!("{OBSERVED}[limits]\nconcurrency = 2\n"),
    );
    let mut daemon = env.spawn_with_open_files(72, 72);
    let addr = endpoint_addr(&mut daemon);
    assert_eq!(get(addr, "/metrics").await.0, 200);

    let flood = Slowloris::start(addr, 300);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let statuses = scrapes_answered_fast(addr, 5).await;
    files_go_through(&env, &mut daemon, 20).await;
    flood.stop();
    println!("scrapes during the flood: {statuses:?}");
    wait_until(
        "the endpoint to answer again",
        Duration::from_secs(15),
        async || {
            let (status, _) = get(addr, "/metrics").await;
            (status == 200, status)
        },
    )
    .await;
    env.stop(daemon);
}

/// The database's disk fills up and a file arrives: its claim cannot be recorded, and every
/// round fails to record it again. `/readyz` says so, with the error, once no round has done all
/// its work for [`LOOP_STALE`], and is ready again as soon as one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_503_naming_the_error_while_every_round_fails_and_200_once_one_succeeds() {
    let Some(fs) = Tmpfs::mount(3 * 1024) else {
        return;
    };
    let sim = spawn_sim(quick_sim()).await;
    let db = fs.path().join("state.db");
    let env = Env::placed(&sim.handle.base_url(), OBSERVED, None, Some(&db));
    let (mut daemon, addr) = spawn_observed(&env);
    let ready = async || {
        let (status, body) = get(addr, "/readyz").await;
        (status == 200, body)
    };
    wait_until("ready", Duration::from_secs(10), ready).await;

    let filler = fs.fill("filler");
    env.drop_file(
        "f.jsonl",
        requests("full-readyz", 5, "gpt-4o-mini").as_bytes(),
    );
    daemon.wait_for_line("a daemon round failed", Duration::from_secs(30));
    let body = wait_until(
        "/readyz to say the rounds fail",
        LOOP_STALE + Duration::from_secs(15),
        async || {
            let (status, body) = get(addr, "/readyz").await;
            (status == 503, body)
        },
    )
    .await;
    assert!(
        body.contains("the main loop's last successful round ended")
            && body.contains("the last round failed: ")
            && body.contains("full"),
        "{body}"
    );

    std::fs::remove_file(&filler).unwrap();
    wait_until("ready again", Duration::from_secs(30), ready).await;
    env.wait_finished(1, Duration::from_secs(60), &mut daemon)
        .await;
    env.stop(daemon);
}

/// The models with series of their own in `batchwatch_tokens_total`, and the tokens of all.
fn tokens_by_model(samples: &BTreeMap<String, f64>) -> (BTreeSet<String>, f64) {
    let tokens: Vec<(&String, &f64)> = samples
        .iter()
        .filter(|(series, _)| series.starts_with("batchwatch_tokens_total{"))
        .collect();
    let models = tokens
        .iter()
        .filter_map(|(series, _)| {
            let rest = series.split("model=\"").nth(1)?;
            Some(rest.split('"').next()?.to_owned())
        })
        .collect();
    (models, tokens.iter().map(|(_, n)| **n).sum())
}

/// Every token the database holds, of every model.
async fn tokens_in_database(env: &Env) -> f64 {
    let store = env.store().await;
    let costs = store.model_costs().await.unwrap();
    store.close().await;
    costs
        .iter()
        .map(|m| (m.input_tokens + m.cached_tokens + m.output_tokens + m.reasoning_tokens) as f64)
        .sum()
}

/// Scrapes until `/metrics` shows every token of the database; returns the labelled models.
async fn scrape_models(env: &Env, addr: SocketAddr) -> BTreeSet<String> {
    let total = tokens_in_database(env).await;
    assert!(total > 0.0, "the batches reported their usage");
    let (models, _) = wait_until(
        "/metrics to count every token of the database",
        Duration::from_secs(10),
        async || {
            let (status, text) = get(addr, "/metrics").await;
            assert_eq!(status, 200, "{text}");
            let (models, scraped) = tokens_by_model(&samples(&text));
            (scraped == total, (models, scraped))
        },
    )
    .await;
    models
}

/// Files of four models with `metrics.max_models = 2`: two models get series, the rest are
/// counted (in full) as `other`; a new model later finds no room and the set does not change;
/// after a restart the two models with the most tokens have the series.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_beyond_max_models_are_counted_as_other_and_the_set_holds_until_a_restart() {
    let sim = spawn_sim(quick_sim()).await;
    let env = Env::new(
        &sim.handle.base_url(),
        &format!("{OBSERVED}max_models = 2\n"),
    );
    let (mut daemon, addr) = spawn_observed(&env);
    for (model, n) in [("m-a", 30), ("m-b", 10), ("m-c", 5)] {
        env.drop_file(
            &format!("{model}.jsonl"),
            requests(model, n, model).as_bytes(),
        );
    }
    env.wait_finished(3, Duration::from_secs(60), &mut daemon)
        .await;
    let own = |names: &[&str]| {
        names
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    // The first scrape sees the three in the order of their names.
    assert_eq!(
        scrape_models(&env, addr).await,
        own(&["m-a", "m-b", "other"])
    );

    env.drop_file("m-d.jsonl", requests("m-d", 60, "m-d").as_bytes());
    env.wait_finished(4, Duration::from_secs(60), &mut daemon)
        .await;
    assert_eq!(
        scrape_models(&env, addr).await,
        own(&["m-a", "m-b", "other"]),
        "no room for a newcomer while the daemon runs, however busy"
    );
    env.stop(daemon);

    let (daemon, addr) = spawn_observed(&env);
    assert_eq!(
        scrape_models(&env, addr).await,
        own(&["m-a", "m-d", "other"]),
        "after a restart the busiest two"
    );
    env.stop(daemon);
}
