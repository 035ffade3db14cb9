//! The simulator at fleet scale: the batch list with another tool's batches interleaved and
//! in a shuffled order (every batch on exactly one page of a walk, limits honoured, `has_more`
//! right), and the admin tools a fleet benchmark needs: counts, stepping batches on, and how
//! often each batch was seen.

use std::collections::{BTreeMap, BTreeSet};

use batchwatch_sim::{ListOrder, SimConfig, Step};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::sim::{START, TestSim, chat_lines, spawn_sim, stopped_clock};

fn id(value: &Value) -> &str {
    value["id"].as_str().expect("an id")
}

fn fleet(list_order: ListOrder, foreign_batches: u64) -> SimConfig {
    SimConfig {
        list_order,
        foreign_batches,
        ..stopped_clock()
    }
}

/// Creates `n` batches of ours on one uploaded file, each with its own job id; returns them.
async fn create_ours(sim: &TestSim, n: usize) -> Vec<Value> {
    let file = sim.upload(&chat_lines(10, "gpt-4o-mini")).await;
    let file_id = id(&file).to_owned();
    let mut batches = Vec::with_capacity(n);
    for k in 0..n {
        batches.push(sim.create(&file_id, Some(&format!("job_{k:04}"))).await);
    }
    batches
}

/// One page of a walk, as the test sees it.
struct Page {
    ids: Vec<String>,
    has_more: bool,
}

/// Walks the whole list with `limit`, checking each page's own fields; `between` runs before
/// every page after the first.
async fn walk_with(sim: &TestSim, limit: usize, mut between: impl AsyncFnMut(usize)) -> Vec<Page> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        if !pages.is_empty() {
            between(pages.len()).await;
        }
        let path = match &after {
            Some(a) => format!("/batches?limit={limit}&after={a}"),
            None => format!("/batches?limit={limit}"),
        };
        let (status, page) = sim.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= limit, "{path} gave {} batches", data.len());
        let ids: Vec<String> = data.iter().map(|b| id(b).to_owned()).collect();
        assert_eq!(page["first_id"].as_str(), ids.first().map(String::as_str));
        assert_eq!(page["last_id"].as_str(), ids.last().map(String::as_str));
        let has_more = page["has_more"].as_bool().expect("has_more");
        after = page["last_id"].as_str().map(str::to_owned);
        pages.push(Page { ids, has_more });
        if !has_more {
            return pages;
        }
        assert!(
            pages.len() <= 1000,
            "the walk does not end: has_more stays true"
        );
    }
}

async fn walk(sim: &TestSim, limit: usize) -> Vec<Page> {
    walk_with(sim, limit, async |_| {}).await
}

/// Every page but the last is full and says more follow; the last says none do.
fn assert_pages_full_until_the_last(pages: &[Page], limit: usize) {
    let (last, full) = pages.split_last().expect("at least one page");
    for (n, page) in full.iter().enumerate() {
        assert_eq!(page.ids.len(), limit, "page {n} is short but not the last");
        assert!(page.has_more, "page {n}");
    }
    assert!(!last.has_more);
    assert!(last.ids.len() <= limit);
}

fn all_ids(pages: &[Page]) -> Vec<String> {
    pages.iter().flat_map(|p| p.ids.iter().cloned()).collect()
}

/// Every id in `ids` exactly once.
fn assert_once_each(listed: &[String], expected: &BTreeSet<String>) {
    let mut seen = BTreeMap::<&str, usize>::new();
    for id in listed {
        *seen.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "listed more than once: {twice:?}");
    let listed: BTreeSet<String> = listed.iter().cloned().collect();
    let missing: Vec<_> = expected.difference(&listed).collect();
    assert!(missing.is_empty(), "never listed: {missing:?}");
    let extra: Vec<_> = listed.difference(expected).collect();
    assert!(extra.is_empty(), "listed but unknown: {extra:?}");
}

#[tokio::test]
async fn foreign_batches_are_interleaved_with_ours_and_a_walk_lists_every_batch_once_newest_first()
{
    let sim = spawn_sim(fleet(ListOrder::NewestFirst, 45)).await;
    let ours = create_ours(&sim, 40).await;
    let stats = sim.handle.stats().await;
    // One of theirs after each of ours, until their 45 are made: 40 here.
    let created: Vec<(String, bool)> = stats
        .batches
        .iter()
        .map(|b| (b.id.clone(), b.foreign))
        .collect();
    assert_eq!(created.len(), 80);
    for (k, (_, foreign)) in created.iter().enumerate() {
        assert_eq!(*foreign, k % 2 == 1, "batch {k} in creation order");
    }
    let our_ids: BTreeSet<String> = ours.iter().map(|b| id(b).to_owned()).collect();
    for (batch_id, foreign) in &created {
        assert_eq!(!foreign, our_ids.contains(batch_id), "{batch_id}");
    }
    assert_eq!(
        stats.batches_by_job.len(),
        40,
        "the other tool's batches carry no batchwatch_job_id"
    );

    let pages = walk(&sim, 7).await;
    assert_eq!(pages.len(), 12, "80 batches, 7 a page");
    assert_pages_full_until_the_last(&pages, 7);
    let listed = all_ids(&pages);
    let newest_first: Vec<String> = created.iter().rev().map(|(id, _)| id.clone()).collect();
    assert_eq!(listed, newest_first);

    // Their metadata: none, another tool's keys, or a job id under a key that is not ours.
    let (_, page) = sim.get("/batches?limit=100").await;
    let mut kinds = BTreeSet::new();
    for batch in page["data"].as_array().unwrap() {
        if our_ids.contains(id(batch)) {
            assert!(batch["metadata"]["batchwatch_job_id"].is_string());
            continue;
        }
        let metadata = &batch["metadata"];
        assert!(
            metadata["batchwatch_job_id"].is_null(),
            "a foreign batch with our metadata: {batch}"
        );
        kinds.insert(match metadata {
            Value::Null => "none",
            m if m["tool"].is_string() => "tool",
            m if m["job_id"].is_string() => "job_id",
            other => panic!("unexpected foreign metadata {other}"),
        });
        assert_eq!(batch["endpoint"], "/v1/chat/completions");
    }
    assert_eq!(kinds, BTreeSet::from(["job_id", "none", "tool"]));

    // The other tool stops at its 45.
    create_ours(&sim, 10).await;
    assert_eq!(sim.handle.counts().await.foreign, 45);
}

#[tokio::test]
async fn limits_from_1_to_100_are_honoured_and_others_refused() {
    let sim = spawn_sim(fleet(ListOrder::NewestFirst, 150)).await;
    create_ours(&sim, 130).await;
    let total: usize = 260;
    for limit in [1, 37, 100] {
        let pages = walk(&sim, limit).await;
        assert_eq!(pages.len(), total.div_ceil(limit), "limit {limit}");
        assert_pages_full_until_the_last(&pages, limit);
        assert_eq!(all_ids(&pages).len(), total);
    }
    let (_, default) = sim.get("/batches").await;
    assert_eq!(default["data"].as_array().unwrap().len(), 20, "the default");
    for bad in ["0", "101", "-1", "ten"] {
        let (status, error) = sim.get(&format!("/batches?limit={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={bad}");
        assert_eq!(error["error"]["param"], "limit", "{error}");
    }
}

#[tokio::test]
async fn a_shuffled_list_is_not_newest_first_but_pages_every_batch_exactly_once() {
    let sim = spawn_sim(fleet(ListOrder::Shuffled, 60)).await;
    create_ours(&sim, 60).await;
    let stats = sim.handle.stats().await;
    let everyone: BTreeSet<String> = stats.batches.iter().map(|b| b.id.clone()).collect();
    let newest_first: Vec<String> = stats.batches.iter().rev().map(|b| b.id.clone()).collect();

    let pages = walk(&sim, 9).await;
    assert_pages_full_until_the_last(&pages, 9);
    let listed = all_ids(&pages);
    assert_once_each(&listed, &everyone);
    assert_ne!(listed, newest_first, "the habit is broken");
    let head: BTreeSet<&String> = listed[..20].iter().collect();
    let newest: BTreeSet<&String> = newest_first[..20].iter().collect();
    assert!(
        head.intersection(&newest).count() < 15,
        "the first page should not be mostly the newest batches"
    );
    assert_eq!(all_ids(&walk(&sim, 13).await), listed, "the order is fixed");

    // Batches created during a walk land anywhere; those there from the start are still
    // listed exactly once, the new ones at most once.
    let file = sim.upload(&chat_lines(10, "gpt-4o-mini")).await;
    let file_id = id(&file).to_owned();
    let mut made = Vec::new();
    let pages = walk_with(&sim, 9, async |n| {
        for k in 0..3 {
            let batch = sim
                .create(&file_id, Some(&format!("job_late_{n}_{k}")))
                .await;
            made.push(id(&batch).to_owned());
        }
    })
    .await;
    let listed = all_ids(&pages);
    let from_the_start: Vec<String> = listed
        .iter()
        .filter(|id| everyone.contains(*id))
        .cloned()
        .collect();
    assert_once_each(&from_the_start, &everyone);
    let once: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(once.len(), listed.len(), "no batch twice in one walk");
    let late_listed = listed.len() - everyone.len();
    assert!(
        late_listed > 0 && late_listed < made.len(),
        "{late_listed} of {} batches made during the walk were listed: some land behind \
         the cursor, some ahead",
        made.len()
    );
}

#[tokio::test]
async fn vanished_batches_leave_the_list_and_a_vanished_cursor_still_marks_its_place() {
    for order in [ListOrder::NewestFirst, ListOrder::Shuffled] {
        let sim = spawn_sim(fleet(order, 0)).await;
        create_ours(&sim, 12).await;
        let before = all_ids(&walk(&sim, 100).await);

        let (_, first) = sim.get("/batches?limit=4").await;
        let cursor = first["last_id"].as_str().unwrap().to_owned();
        assert!(sim.handle.vanish(&cursor).await);
        // The next page starts right after the vanished batch, where it was.
        let (status, second) = sim.get(&format!("/batches?limit=4&after={cursor}")).await;
        assert_eq!(status, StatusCode::OK);
        let second: Vec<&str> = second["data"].as_array().unwrap().iter().map(id).collect();
        assert_eq!(second, before[4..8], "{order:?}");

        // Only vanished batches after a full page: has_more says no more.
        for gone in &before[9..] {
            assert!(sim.handle.vanish(gone).await);
        }
        let (_, page) = sim
            .get(&format!("/batches?limit=3&after={}", before[5]))
            .await;
        let ids: Vec<&str> = page["data"].as_array().unwrap().iter().map(id).collect();
        assert_eq!(ids, before[6..9], "{order:?}");
        assert_eq!(page["has_more"], false, "{order:?}");

        let (_, page) = sim.get("/batches?limit=2&after=batch_unknown").await;
        assert_eq!(page["data"], json!([]), "an unknown cursor: an empty page");
        assert_eq!(page["has_more"], false);
    }
}

#[tokio::test]
async fn a_restarted_simulator_keeps_its_list_order_and_its_other_tool_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        data_dir: Some(dir.path().to_owned()),
        ..fleet(ListOrder::Shuffled, 30)
    };
    let sim = spawn_sim(config.clone()).await;
    create_ours(&sim, 20).await;
    let before = all_ids(&walk(&sim, 100).await);
    sim.handle.shutdown().await.expect("a clean shutdown");

    let sim = spawn_sim(config).await;
    assert_eq!(all_ids(&walk(&sim, 100).await), before);
    create_ours(&sim, 20).await;
    let counts = sim.handle.counts().await;
    assert_eq!(
        counts.foreign, 30,
        "the other tool stops at 30 across the restart"
    );
    assert_eq!(counts.batches["validating"], 70);
    let files = sim.get("/files?purpose=batch").await.1;
    let theirs = files["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["filename"] == "etl-nightly.jsonl")
        .count();
    assert_eq!(theirs, 1, "the other tool's one input file, kept: {files}");
}

/// Waits until `n` batches are in progress (validations finish on other threads).
async fn settle(sim: &TestSim, n: u64) {
    for _ in 0..500 {
        if sim.handle.counts().await.batches.get("in_progress") == Some(&n) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never {n} in progress: {:?}", sim.handle.counts().await);
}

#[tokio::test]
async fn counts_report_requests_per_route_and_batches_per_status() {
    let sim = spawn_sim(fleet(ListOrder::NewestFirst, 5)).await;
    let ours = create_ours(&sim, 3).await;
    sim.advance(10.0).await;
    settle(&sim, 6).await;
    let counts = sim.handle.counts().await;
    assert_eq!(counts.now_ms, (START + 10) * 1000);
    assert_eq!(counts.requests["POST /v1/batches"], 3);
    assert_eq!(counts.requests["POST /v1/files"], 1);
    assert_eq!(counts.requests.get("GET /v1/batches"), None);
    assert_eq!(counts.batches, BTreeMap::from([("in_progress".into(), 6)]));
    assert_eq!(counts.foreign, 3);

    sim.batch(id(&ours[0])).await;
    sim.get("/batches?limit=2").await;
    sim.get("/batches?limit=2").await;
    let over_http = sim.admin_json("/counts", None).await;
    assert_eq!(over_http["requests"]["GET /v1/batches/{batch_id}"], 1);
    assert_eq!(over_http["requests"]["GET /v1/batches"], 2);
    assert_eq!(over_http["foreign"], 3);
    assert_eq!(over_http["batches"]["in_progress"], 6);
}

#[tokio::test]
async fn a_stepped_batch_moves_on_now_and_its_change_is_recorded_to_the_millisecond() {
    let sim = spawn_sim(SimConfig {
        in_progress_secs: 1e7,
        finalizing_secs: 1e7,
        ..fleet(ListOrder::NewestFirst, 4)
    })
    .await;
    let ours = create_ours(&sim, 4).await;
    sim.advance(10.0).await;
    sim.wait_status(id(&ours[3]), "in_progress").await;
    sim.advance(0.25).await;

    // Two picked at random among ours in progress; never one of theirs.
    let stepped = sim
        .admin_json("/batches/step", Some(&json!({"count": 2})))
        .await;
    let stepped = stepped["stepped"].as_array().unwrap().clone();
    assert_eq!(stepped.len(), 2);
    let our_ids: BTreeSet<&str> = ours.iter().map(id).collect();
    let at_ms = (START + 10) * 1000 + 250;
    for s in &stepped {
        assert!(our_ids.contains(id(s)), "{s}");
        assert_eq!(s["moved"], true);
        assert_eq!(s["status"], "finalizing");
        assert_eq!(s["at_ms"], at_ms);
        let batch = sim.batch(id(s)).await;
        assert_eq!(batch["status"], "finalizing");
        assert_eq!(batch["finalizing_at"], START + 10);
        assert_eq!(
            batch["request_counts"]["completed"], 10,
            "every request done"
        );
    }
    let stats = sim.handle.stats().await;
    let first = stats
        .batches
        .iter()
        .find(|b| b.id == id(&stepped[0]))
        .unwrap();
    let last = first.history.last().unwrap();
    assert_eq!((last.status.as_str(), last.at_ms), ("finalizing", at_ms));

    // By id: a finalizing batch completes, one in progress finalizes, a finished one stays.
    let finalizing = id(&stepped[0]).to_owned();
    let rest: Vec<String> = ours
        .iter()
        .map(|b| id(b).to_owned())
        .filter(|b| !stepped.iter().any(|s| id(s) == b))
        .collect();
    let moved = sim
        .handle
        .step(Step::Ids {
            ids: vec![finalizing.clone(), rest[0].clone()],
        })
        .await
        .unwrap();
    let moved: Vec<(&str, bool, &str)> = moved
        .iter()
        .map(|s| (s.id.as_str(), s.moved, s.status.as_str()))
        .collect();
    assert_eq!(
        moved,
        [
            (finalizing.as_str(), true, "completed"),
            (rest[0].as_str(), true, "finalizing")
        ]
    );
    let again = sim
        .handle
        .step(Step::Ids {
            ids: vec![finalizing.clone()],
        })
        .await
        .unwrap();
    assert!(!again[0].moved);
    assert_eq!(again[0].status, "completed");
    let done = sim.batch(&finalizing).await;
    assert!(done["output_file_id"].is_string(), "{done}");
    assert!(
        sim.handle
            .step(Step::Ids {
                ids: vec!["batch_unknown".into()]
            })
            .await
            .is_err()
    );
    // Nothing else moved: the rest stays in progress for its 10^7 s.
    sim.advance(3600.0).await;
    assert_eq!(sim.batch(&rest[1]).await["status"], "in_progress");
}

#[tokio::test]
async fn observations_count_each_sending_and_the_longest_gap_unseen() {
    let sim = spawn_sim(fleet(ListOrder::NewestFirst, 0)).await;
    let ours = create_ours(&sim, 3).await;
    let (a, b, c) = (id(&ours[0]), id(&ours[1]), id(&ours[2]));
    let created_ms = START * 1000;

    sim.advance(20.0).await;
    sim.batch(a).await; // a: seen at +20 s
    sim.advance(30.0).await;
    sim.get("/batches?limit=2").await; // c and b: seen at +50 s
    sim.handle.reset_observations().await;
    sim.advance(5.0).await;
    sim.batch(a).await; // a: seen at +55 s, after a 35 s gap that began before the reset
    sim.advance(10.0).await;

    let seen = sim.handle.observations().await;
    assert_eq!(seen.since_ms, created_ms + 50_000);
    assert_eq!(seen.now_ms, created_ms + 65_000);
    let by_id: BTreeMap<&str, (u64, i64, i64)> = seen
        .batches
        .iter()
        .map(|o| (o.id.as_str(), (o.count, o.last_ms, o.max_gap_ms)))
        .collect();
    assert_eq!(by_id[a], (1, created_ms + 55_000, 35_000));
    // b and c: last seen at +50 s; since then the open gap is 15 s.
    assert_eq!(by_id[b], (0, created_ms + 50_000, 15_000));
    assert_eq!(by_id[c], (0, created_ms + 50_000, 15_000));
    assert!(seen.batches.iter().all(|o| o.created_ms == created_ms));
}
