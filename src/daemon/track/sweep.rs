//! The list sweep: many active batches observed with one request per hundred.
//!
//! `GET /batches?limit=100&after=...` returns whole batch objects, so one page observes up to
//! a hundred batches where a retrieve observes one. Nothing here leans on a promise the API
//! does not make:
//!
//! * The sweep reads pages until every active submission was seen, or a page holds only
//!   batches created before the oldest active one still unseen (the real list runs newest
//!   first, but does not promise it), or `poll.list_page_budget` pages were read, or the list
//!   ends.
//! * Batches the daemon does not track (other tools' batches in the same organisation,
//!   another daemon's jobs, batches of finished submissions) are skipped by their id: never
//!   recorded, never cancelled.
//! * An active submission the sweep did not see (it vanished, it lies beyond the budget, the
//!   list has another order) and whose poll is due is retrieved on its own, as in `retrieve`
//!   mode: a 404 makes it lost, and no batch waits longer than its poll interval.
//! * A failed page (a 429, a 5xx, an answer that is not a list) ends the sweep: the due
//!   submissions not yet seen are retrieved, or, when the server gave a Retry-After, their
//!   polls wait that long. The sweep sets no timer of its own: it runs when polls are due, so
//!   a failing list cannot make the loop spin.
//!
//! A sweep reads every active submission first, and the poll schedule learns them whole
//! ([`crate::daemon::track::poll`]). A batch whose status and counts are unchanged writes
//! nothing: its next poll is planned in the schedule, in memory (only a failed poll's error
//! that stood is cleared). The changed ones of a page are recorded in one transaction, each as
//! any observation ([`crate::daemon::track::observe::observe`]), one history row per change,
//! whichever way it was seen. A page older than a row's last observation does not overwrite
//! it. A quiet page commits no transaction at all.
//!
//! # The first sweep reads the start-up check's pages
//!
//! At a start every unfinished job is checked against the service
//! ([`crate::daemon::submit::reconcile::verify`]), which lists the batches back to the jobs'
//! claims, while the first sweep (the schedule is built with every batch due) lists them until
//! it has seen every active one: the same pages, newest first, twice, at the shared request
//! rate (100 pages each at 10,000 batches, some 20 s each at 5 requests/s). So when a round
//! starts both, it joins them with a [`feed`]: the check reads the list and hands each page
//! ([`Feeder`]), as it arrives and with the time it arrived, to the sweep ([`Feed`]), which
//! takes it as a page it had read itself. Each side keeps its own rules, and stops the walk
//! for itself alone:
//!
//! * the sweep takes pages from the feed while it has one, in the order read, and follows the
//!   cursor they carry; it drops the feed as soon as it wants no more (every batch seen, past
//!   the oldest unseen, its page budget), and the check reads on alone;
//! * when the feed ends first (the check has read back far enough, failed, found nothing to
//!   check, or was never started), the sweep reads the rest of the list itself from the
//!   cursor of the last page it took, one request a page, as any sweep;
//! * a page is recorded exactly as a page the sweep read: its time is when it arrived, so a
//!   page older than a row's last observation does not overwrite it.
//!
//! Why that is still safe: a fed page is a page of the same list, read while the sweep runs,
//! and the sweep observes on it only the batches the database records as active submissions
//! (as ever: polling was never held back for a job not yet checked; only uploads, creates
//! and cancels are). The check sees every page it would have read itself and reads no fewer
//! (it never waits for the sweep, which reads the feed at once or has dropped it), and it
//! adopts after its walk, from submissions read after it, as before. What one side misses
//! the other's rules still catch: an active batch the fed pages did not show is read on the
//! sweep's own pages or retrieved.
//!
//! When to sweep ([`wanted`]): in `list` mode whenever a poll is due; in `auto` mode when the
//! polls due within `poll.min_interval` outnumber the pages the last sweep needed (and a
//! handful), that is, when a sweep costs fewer requests than retrieving them; never in
//! `retrieve` mode.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use futures_util::StreamExt;

use crate::api::{ApiError, Batch, ListPage};
use crate::clock::{self, Timestamp};
use crate::config::PollMode;
use crate::daemon::ctx::Ctx;
pub use crate::daemon::shared::PAGE;
use crate::daemon::shared::{PollLoad, Sweeps, Window};
use crate::daemon::track::observe::{
    Spread, next_poll_at, observation, plan, seen, sighting, unchanged,
};
use crate::daemon::track::poll;
use crate::model::BatchStatus;
use crate::store::batches::{Observation, Submission, Tracked};
use crate::store::jobs::Job;
use crate::store::ops::track::Sighting;
use crate::store::prelude::*;

/// Below this many polls due, `auto` retrieves: a sweep is not worth its first page.
pub const HANDFUL: i64 = 4;

/// Whether the polls due now are best done by a sweep, given how many are due now and within
/// `poll.min_interval`, of how many active.
pub fn wanted(mode: PollMode, sweeps: &Sweeps, load: PollLoad) -> bool {
    let PollLoad {
        due_now,
        due_soon,
        active,
    } = load;
    match mode {
        PollMode::Retrieve => false,
        PollMode::List => due_now > 0,
        PollMode::Auto => {
            due_now > 0 && due_soon > HANDFUL && due_soon > sweeps.expected_pages(active)
        }
    }
}

/// Whether the loop should start a sweep now (never on a follower).
pub fn due(ctx: &Ctx) -> bool {
    let mode = ctx.settings.poll.mode;
    let Some(polls) = ctx.leader_polls().filter(|_| mode != PollMode::Retrieve) else {
        return false;
    };
    let now = ctx.clock.now();
    let soon = clock::add(now, ctx.settings.poll.min_interval.get());
    wanted(mode, &ctx.sweeps, polls.load(now, soon))
}

/// How many pages the check may read ahead of the sweep it feeds; a sweep records a page in
/// far less than the next one takes to arrive at any rate the API allows.
const FED_AHEAD: usize = 4;

/// A page of the batch list, and when it arrived.
type Fed = (ListPage<Batch>, Timestamp);

/// A feed of the batch list's pages from the walk that reads them to a sweep (see the module
/// docs): the walk's end and the sweep's.
pub fn feed() -> (Feeder, Feed) {
    let (sent, received) = tokio::sync::mpsc::channel(FED_AHEAD);
    (Feeder(sent), Feed(received))
}

/// The reading end's half of a [`feed`].
#[derive(Debug)]
pub struct Feeder(tokio::sync::mpsc::Sender<Fed>);

impl Feeder {
    /// Hands `page`, arrived at `at`, to the sweep. False once the sweep wants no more pages.
    pub async fn give(&self, page: ListPage<Batch>, at: Timestamp) -> bool {
        self.0.send((page, at)).await.is_ok()
    }
}

/// The sweep's half of a [`feed`].
#[derive(Debug)]
pub struct Feed(tokio::sync::mpsc::Receiver<Fed>);

/// One sweep; `busy` are submissions another task is working on, left to it. Its first pages
/// come from `feed` while that has them (see the module docs).
pub async fn sweep(ctx: Ctx, busy: HashSet<i64>, mut feed: Option<Feed>) -> anyhow::Result<()> {
    let read_at = ctx.clock.now();
    let plan = ctx.store.tracked().await?;
    ctx.polls.learn(
        plan.iter().map(|t| (t.id, t.next_poll_at.as_deref())),
        Window::Whole,
        read_at,
    );
    let index: HashMap<&str, usize> = plan
        .iter()
        .enumerate()
        .map(|(i, t)| (t.remote_id.as_str(), i))
        .collect();
    let mut unseen = Unseen::new(&plan);
    let budget = ctx.settings.poll.list_page_budget;
    let (mut pages, mut after) = (0u32, None::<String>);
    let mut failure = None;
    while unseen.left > 0 && pages < budget {
        let fed = match feed.as_mut() {
            Some(Feed(pages)) => pages.recv().await,
            None => None,
        };
        let (page, fetched) = match fed {
            Some(fed) => fed,
            None => {
                // Read on alone from the last page taken, fed or not.
                feed = None;
                let limit = ctx.client.max_page();
                match ctx.client.list_batches_page(limit, after.as_deref()).await {
                    Ok(page) => (page, ctx.clock.now()),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        };
        pages += 1;
        let mut ours = Vec::new();
        for batch in &page.data {
            if let Some(&i) = index.get(batch.id.as_str())
                && unseen.see(i)
                && !busy.contains(&plan[i].id)
            {
                ours.push((&plan[i], batch));
            }
        }
        record_page(&ctx, &ours, fetched).await?;
        let next = page
            .last_id
            .clone()
            .or_else(|| page.data.last().map(|b| b.id.clone()));
        if page.has_more != Some(true) || page.data.is_empty() || unseen.left == 0 {
            break;
        }
        if next.is_none() || next == after {
            tracing::warn!(
                after = after.as_deref().unwrap_or("(first page)"),
                "the batch list claims more pages but its cursor did not advance; retrieving the rest"
            );
            break;
        }
        if unseen.all_newer_than(page.data.iter().map(|b| b.created_at).max().flatten()) {
            break;
        }
        after = next;
    }
    // The walk that feeds it reads on without it.
    drop(feed);
    ctx.sweeps.last_pages.store(pages.max(1), Ordering::Relaxed);
    let now = ctx.clock.now();
    let left: Vec<i64> = plan
        .iter()
        .zip(&unseen.seen)
        .filter(|(t, seen)| !**seen && !busy.contains(&t.id) && ctx.polls.is_due(t.id, now))
        .map(|(t, _)| t.id)
        .collect();
    tracing::debug!(
        pages,
        tracked = plan.len(),
        unseen = unseen.left,
        retrieving = left.len(),
        "list sweep"
    );
    if let Some(err) = failure {
        tracing::warn!(error = %err, due = left.len(), "a page of the batch list failed; retrieving the batches it did not show");
        ctx.gate.note(&err, now, ctx.schedule.auth_retry);
        if ctx.gate.paused().is_some() {
            // The key was refused: nothing is sent until the gate's probe gets through.
            return Ok(());
        }
        if let Some(wait) = err.retry_after() {
            return postpone(&ctx, &left, &err, wait).await;
        }
    }
    retrieve(&ctx, left).await
}

/// Records one page's batches of ours, as seen at `now`, in one transaction.
async fn record_page(ctx: &Ctx, ours: &[(&Tracked, &Batch)], now: Timestamp) -> anyhow::Result<()> {
    if ours.is_empty() {
        return Ok(());
    }
    let mut answered = Vec::new();
    let mut changed = Vec::new();
    for (t, batch) in ours {
        let counts = [t.request_total, t.request_completed, t.request_failed];
        if unchanged(t.status.as_ref(), counts, batch) {
            let at = next_poll_at(
                ctx,
                &batch.status,
                &t.created_at,
                &t.deadline_at,
                now,
                Spread::Exact,
            );
            ctx.polls.seen(t.id, t.next_poll_at.as_deref(), at);
            if t.erred {
                answered.push(t.id);
            }
        } else {
            changed.push((t.id, *batch));
        }
    }
    ctx.metrics.answered(now);
    if answered.is_empty() && changed.is_empty() {
        // A quiet page: nothing to record.
        return Ok(());
    }
    let observations: Vec<Observation> = changed.iter().map(|(_, b)| observation(b)).collect();
    let sightings: Vec<Sighting> = changed
        .iter()
        .zip(&observations)
        .map(|((id, batch), o)| sighting(*id, batch, o))
        .collect();
    let batch_of: HashMap<i64, &Batch> = changed.iter().copied().collect();
    let decide = |job: &Job, row: &Submission, status: &BatchStatus| {
        plan(ctx, batch_of[&row.id], job, row, status, now)
    };
    let observed = ctx
        .store
        .observe_page(&ctx.leader_lease(), &answered, &sightings, decide, now)
        .await?;
    for o in observed {
        let batch = batch_of[&o.id];
        seen(ctx, batch, o, now).report(ctx);
    }
    Ok(())
}

/// The tracked batches a sweep has not seen yet, by creation time, to tell when a page lies
/// past all of them. Built once per sweep: asking costs no more than the batches seen since
/// the last question.
struct Unseen {
    seen: Vec<bool>,
    left: usize,
    /// (creation time, index in the plan) of every batch whose creation time is known,
    /// oldest first; those before `cursor` are seen.
    by_age: Vec<(Timestamp, usize)>,
    cursor: usize,
    dated: Vec<bool>,
    /// Unseen batches without a known creation time: they could be anywhere in the list.
    undated: usize,
}

impl Unseen {
    fn new(plan: &[Tracked]) -> Unseen {
        let mut by_age = Vec::with_capacity(plan.len());
        let mut dated = vec![false; plan.len()];
        for (i, t) in plan.iter().enumerate() {
            if let Some(created) = t.remote_created_at.as_deref().and_then(clock::parse) {
                by_age.push((created, i));
                dated[i] = true;
            }
        }
        by_age.sort_unstable();
        Unseen {
            seen: vec![false; plan.len()],
            left: plan.len(),
            undated: plan.len() - by_age.len(),
            by_age,
            cursor: 0,
            dated,
        }
    }

    /// Marks the batch at `i` seen; false when it was seen already.
    fn see(&mut self, i: usize) -> bool {
        if std::mem::replace(&mut self.seen[i], true) {
            return false;
        }
        self.left -= 1;
        if !self.dated[i] {
            self.undated -= 1;
        }
        true
    }

    /// Whether every batch not yet seen was created after the newest batch of a page: in a list
    /// that runs newest first, nothing further down can be one of them.
    fn all_newer_than(&mut self, newest_on_page: Option<Timestamp>) -> bool {
        let Some(newest_on_page) = newest_on_page else {
            return false;
        };
        if self.undated > 0 {
            return false;
        }
        while self
            .by_age
            .get(self.cursor)
            .is_some_and(|&(_, i)| self.seen[i])
        {
            self.cursor += 1;
        }
        self.by_age
            .get(self.cursor)
            .is_some_and(|&(oldest, _)| newest_on_page < oldest)
    }
}

/// Retrieves each of `ids` on its own, `limits.concurrency` at a time.
async fn retrieve(ctx: &Ctx, ids: Vec<i64>) -> anyhow::Result<()> {
    let concurrency = ctx.settings.limits.concurrency as usize;
    let mut polls = futures_util::stream::iter(ids)
        .map(|id| poll::step(ctx.clone(), id))
        .buffer_unordered(concurrency);
    let mut local = None;
    while let Some(outcome) = polls.next().await {
        // A failed request was recorded on its submission and put off; a local failure
        // (the database) fails the sweep, to be tried again.
        if let Err(e) = outcome
            && e.downcast_ref::<ApiError>().is_none()
        {
            local.get_or_insert(e);
        }
    }
    local.map_or(Ok(()), Err)
}

/// Puts the polls of `ids` off by the server's `wait`.
async fn postpone(
    ctx: &Ctx,
    ids: &[i64],
    err: &ApiError,
    wait: std::time::Duration,
) -> anyhow::Result<()> {
    let now = ctx.clock.now();
    let at = clock::format(clock::add(now, wait));
    let (now, error) = (clock::format(now), err.to_string());
    // Those that moved on since the sweep began are left.
    ctx.store
        .defer_polls(&ctx.leader_lease(), ids, &at, &error, &now)
        .await?;
    if let Some(polls) = ctx.leader_polls() {
        for &id in ids {
            polls.stored(id, &at);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(due_now: i64, due_soon: i64, active: i64) -> PollLoad {
        PollLoad {
            due_now,
            due_soon,
            active,
        }
    }

    #[test]
    fn auto_sweeps_when_a_sweep_costs_fewer_requests_than_the_retrieves_due() {
        let fresh = Sweeps::default();
        let auto = |l| wanted(PollMode::Auto, &fresh, l);
        assert!(!auto(load(0, 5000, 10_000)), "nothing due now");
        assert!(!auto(load(3, 3, 3)), "a handful: retrieve");
        assert!(!auto(load(1, 50, 10_000)), "50 retrieves beat 100 pages");
        assert!(auto(load(1, 500, 10_000)), "500 retrieves do not");
        assert!(auto(load(1, 20, 20)), "twenty fit on one page");
        let known = Sweeps::default();
        known.last_pages.store(7, Ordering::Relaxed);
        assert!(!wanted(PollMode::Auto, &known, load(1, 6, 6)));
        assert!(wanted(PollMode::Auto, &known, load(1, 8, 8)));
    }

    fn tracked(id: i64, created: Option<&str>) -> Tracked {
        Tracked {
            id,
            remote_id: format!("batch_{id}"),
            status: None,
            request_total: None,
            request_completed: None,
            request_failed: None,
            remote_created_at: created.map(str::to_owned),
            created_at: "2026-11-22T10:00:00.000Z".to_owned(),
            deadline_at: "2026-11-23T10:00:00.000Z".to_owned(),
            next_poll_at: None,
            erred: false,
        }
    }

    #[test]
    fn a_page_is_past_the_unseen_only_when_each_of_them_is_newer_than_all_it_holds() {
        let at = |s: &str| clock::parse(s);
        let plan = [
            tracked(1, Some("2026-11-22T10:00:03.000Z")),
            tracked(2, Some("2026-11-22T10:00:01.000Z")),
            tracked(3, Some("2026-11-22T10:00:02.000Z")),
        ];
        let mut unseen = Unseen::new(&plan);
        let page_at_1_5 = at("2026-11-22T10:00:01.500Z");
        assert!(!unseen.all_newer_than(page_at_1_5), "batch 2 is older");
        assert!(unseen.see(1));
        assert!(!unseen.see(1), "seen once");
        assert_eq!(unseen.left, 2);
        assert!(
            unseen.all_newer_than(page_at_1_5),
            "2 seen; 1 and 3 are newer"
        );
        assert!(!unseen.all_newer_than(at("2026-11-22T10:00:02.500Z")));
        assert!(
            !unseen.all_newer_than(None),
            "a page without times tells nothing"
        );
        assert!(unseen.see(2));
        assert!(unseen.all_newer_than(at("2026-11-22T10:00:02.500Z")));
        assert!(unseen.see(0));
        assert!(!unseen.all_newer_than(page_at_1_5), "none left to be past");

        let plan = [
            tracked(1, Some("2026-11-22T10:00:03.000Z")),
            tracked(2, None),
        ];
        let mut unseen = Unseen::new(&plan);
        assert!(
            !unseen.all_newer_than(page_at_1_5),
            "an undated batch could be anywhere"
        );
        assert!(unseen.see(1));
        assert!(unseen.all_newer_than(page_at_1_5));
    }

    #[test]
    fn list_sweeps_whenever_a_poll_is_due_and_retrieve_never() {
        let s = Sweeps::default();
        assert!(wanted(PollMode::List, &s, load(1, 1, 1)));
        assert!(!wanted(PollMode::List, &s, load(0, 9, 9)));
        assert!(!wanted(PollMode::Retrieve, &s, load(500, 500, 500)));
    }
}
