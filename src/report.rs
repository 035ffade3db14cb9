//! What the status commands print: `status`, `show` and `history`, as text tables or JSON.
//!
//! Text output shows every value through [`escape`]: a file name or a server's message with a
//! newline or an escape sequence in it keeps to its cell and cannot drive the terminal. On a
//! terminal, states and statuses are coloured ([`Look`]): the only escape sequences printed are
//! batchwatch's own, added after escaping. JSON output carries the values as they are (JSON
//! escapes them).

use std::fmt::Write;

use anyhow::Context;
use serde::Serialize;

use crate::clock::{self, Timestamp};
use crate::config::StuckAfter;
use crate::model::{BatchStatus, JobState};
use crate::printable::escape;
use crate::store::batches::Submission;
use crate::store::figures::StuckBatch;
use crate::store::history::HistoryRow;
use crate::store::jobs::{Job, JobEvent, JobOverview};
use crate::store::notifications::Notification;
use crate::store::ops::lease::InstanceRow;
use crate::store::usage::{BatchUsage, JobCost};
use crate::store::{Store, prelude::*};

/// How text output looks: coloured (on a terminal), and wide (nothing cut short).
#[derive(Debug, Clone, Copy, Default)]
pub struct Look {
    pub colour: bool,
    pub wide: bool,
}

impl Look {
    /// Colour when standard output is a terminal, unless `NO_COLOR` is set (no-color.org) or
    /// the terminal is `dumb`.
    pub fn for_stdout(wide: bool) -> Look {
        use std::io::IsTerminal;
        let set = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
        let colour = std::io::stdout().is_terminal()
            && set("NO_COLOR").is_none()
            && set("TERM").is_none_or(|t| t != "dumb");
        Look { colour, wide }
    }

    /// `text` in `colour`, when colour is on.
    fn paint(&self, text: &str, colour: Option<Colour>) -> String {
        match colour {
            Some(c) if self.colour => format!("\x1b[{}m{text}\x1b[0m", c.sgr()),
            _ => text.to_owned(),
        }
    }

    /// At most `max` characters of `text`, unless wide.
    fn fit(&self, text: &str, max: usize) -> String {
        if self.wide {
            text.to_owned()
        } else {
            shorten(text, max)
        }
    }
}

/// The colours used: what ended well, what ended badly, what was stopped, what is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    Green,
    Red,
    Yellow,
    Cyan,
}

impl Colour {
    fn sgr(self) -> &'static str {
        match self {
            Colour::Green => "32",
            Colour::Red => "31",
            Colour::Yellow => "33",
            Colour::Cyan => "36",
        }
    }

    fn of_state(state: JobState) -> Option<Colour> {
        match state {
            JobState::Completed => Some(Colour::Green),
            JobState::Rejected | JobState::Failed | JobState::Expired => Some(Colour::Red),
            JobState::Cancelling | JobState::Cancelled => Some(Colour::Yellow),
            JobState::Submitting | JobState::Running | JobState::Collecting => Some(Colour::Cyan),
            JobState::Validating | JobState::Queued => None,
        }
    }

    fn of_status(status: &BatchStatus) -> Option<Colour> {
        match status {
            BatchStatus::Completed => Some(Colour::Green),
            BatchStatus::Failed | BatchStatus::Expired => Some(Colour::Red),
            BatchStatus::Cancelling | BatchStatus::Cancelled => Some(Colour::Yellow),
            BatchStatus::Validating | BatchStatus::InProgress | BatchStatus::Finalizing => {
                Some(Colour::Cyan)
            }
            BatchStatus::Other(_) => None,
        }
    }
}

/// Everything about one job, for `show`.
#[derive(Debug, Serialize)]
pub struct JobReport {
    pub job: Job,
    /// The job this one resubmits the undone requests of.
    pub parent_job_id: Option<String>,
    /// Every job of its chain, the original file first (itself alone when it has none).
    pub chain: Vec<crate::store::chain::Link>,
    /// The tokens and estimated cost of all its batches.
    pub usage: Option<JobCost>,
    pub events: Vec<JobEvent>,
    /// Who was, or is to be, told of it (`[[notify]]`), and how each delivery went.
    pub notifications: Vec<Notification>,
    pub batches: Vec<BatchReport>,
}

/// One submission, its usage, its status history, and whether it is stuck.
#[derive(Debug, Serialize)]
pub struct BatchReport {
    #[serde(flatten)]
    pub submission: Submission,
    pub usage: Option<BatchUsage>,
    /// Set when the batch has stayed in its status longer than `alerts.stuck_after` allows:
    /// the limit, as configured.
    pub stuck_over: Option<String>,
    pub history: Vec<HistoryRow>,
}

/// A job of `status --json`: its overview row, its tokens and cost, and its stuck batches.
#[derive(Debug, Serialize)]
pub struct StatusRow<'a> {
    #[serde(flatten)]
    pub job: &'a JobOverview,
    pub usage: Option<&'a JobCost>,
    pub stuck: Vec<&'a StuckBatch>,
}

/// Collects everything about one job; batches stuck by `stuck_after` are marked.
pub async fn job_report(
    store: &Store,
    job_id: &str,
    stuck_after: &StuckAfter,
) -> anyhow::Result<JobReport> {
    let job = store
        .job(job_id)
        .await?
        .with_context(|| format!("no job {job_id}"))?;
    let events = store.job_events(job_id).await?;
    let mut used = store.usage_of(job_id).await?;
    let stuck = store.stuck(stuck_after, Timestamp::now()).await?;
    let mut batch_reports = Vec::new();
    for submission in store.submissions_of(job_id).await? {
        let history = store.history(submission.id).await?;
        let stuck_over = stuck.iter().find(|s| s.id == submission.id).map(|s| {
            format!(
                "alerts.stuck_after.{} = {}",
                s.status,
                crate::daemon::track::stuck::limit(stuck_after, &s.status)
            )
        });
        let usage = used
            .iter()
            .position(|u| u.batch_id == submission.id)
            .map(|i| used.swap_remove(i));
        batch_reports.push(BatchReport {
            submission,
            usage,
            stuck_over,
            history,
        });
    }
    Ok(JobReport {
        usage: store.job_costs(&[job_id]).await?.pop(),
        parent_job_id: store.parent_of(job_id).await?,
        chain: store.chain(job_id).await?,
        notifications: store.notifications_of(job_id).await?,
        job,
        events,
        batches: batch_reports,
    })
}

/// An estimated cost in US dollars: cents for large sums, more digits for small ones.
pub fn dollars(usd: f64) -> String {
    if usd >= 100.0 {
        format!("${usd:.2}")
    } else if usd >= 0.01 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.6}")
    }
}

/// `1200 in (200 cached), 300 out (50 reasoning)`.
pub fn tokens(input: i64, cached: i64, output: i64, reasoning: i64) -> String {
    let mut text = format!("{input} in");
    if cached > 0 {
        let _ = write!(text, " ({cached} cached)");
    }
    let _ = write!(text, ", {output} out");
    if reasoning > 0 {
        let _ = write!(text, " ({reasoning} reasoning)");
    }
    text
}

/// Pretty JSON, for `--json`.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("reports always serialise") + "\n"
}

/// A plain text table: a header row, then rows, columns padded to fit. Cells are escaped.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    styled_table(header, rows, &Look::default(), |_, _| None)
}

/// As [`table`], with the cell at (row, column) in the colour `style` gives it.
fn styled_table(
    header: &[&str],
    rows: &[Vec<String>],
    look: &Look,
    style: impl Fn(usize, usize) -> Option<Colour>,
) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| escape(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: Option<usize>, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let colour = row.and_then(|r| style(r, i));
            let pad = widths[i] - cell.chars().count();
            let _ = write!(text, "{}{:pad$}  ", look.paint(cell, colour), "");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(None, &mut header.iter().copied());
    for (r, row) in rows.iter().enumerate() {
        line(Some(r), &mut row.iter().map(String::as_str));
    }
    out
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max - 1).collect();
    s.push('…');
    s
}

fn or_dash(v: Option<&str>) -> &str {
    v.filter(|s| !s.is_empty()).unwrap_or("-")
}

/// `5/100` or `90/100, 10 failed`; `-` before anything is known.
pub fn progress(total: Option<i64>, completed: Option<i64>, failed: Option<i64>) -> String {
    match (total, completed, failed) {
        (None, None, None) => "-".into(),
        (t, c, f) => {
            let base = format!(
                "{}/{}",
                c.unwrap_or(0),
                t.map_or("?".into(), |t| t.to_string())
            );
            match f {
                Some(f) if f > 0 => format!("{base}, {f} failed"),
                _ => base,
            }
        }
    }
}

fn age(created_at: &str, now: Timestamp) -> String {
    clock::parse(created_at).map_or("-".into(), |t| clock::humanize(clock::between(t, now)))
}

/// Where a deadline stands: `-` once the job ended, as nothing is cancelled then.
fn deadline(deadline_at: &str, state: JobState, now: Timestamp) -> String {
    if state.is_terminal() {
        return "-".into();
    }
    relative(deadline_at, now)
}

/// `in 3h` or `passed 2h ago`.
pub fn relative(at: &str, now: Timestamp) -> String {
    match clock::parse(at) {
        Some(t) if t > now => format!("in {}", clock::humanize(clock::between(now, t))),
        Some(t) => format!("passed {} ago", clock::humanize(clock::between(t, now))),
        None => at.to_owned(),
    }
}

/// What the REASON column says, and how much of it fits: why a job ended or waits, else, while
/// it runs, the last error of its latest submissions (a download that keeps failing, say).
fn reason(r: &JobOverview) -> (String, usize) {
    match (&r.reason_code, &r.last_error) {
        (Some(code), _) if !code.is_empty() => (escape(code).into_owned(), 24),
        (_, Some(error)) if !r.state.is_terminal() && !error.is_empty() => {
            (escape(error).into_owned(), 60)
        }
        _ => ("-".into(), 1),
    }
}

/// The `status` table, with a summary line of counts per state, the tokens and estimated cost
/// of the jobs listed, and the stuck batches.
pub fn status(
    rows: &[JobOverview],
    counts: &[(JobState, i64)],
    costs: &[JobCost],
    stuck: &[StuckBatch],
    now: Timestamp,
    look: &Look,
) -> String {
    let mut out = String::new();
    if counts.is_empty() {
        out.push_str("No jobs yet.\n");
        return out;
    }
    let summary: Vec<String> = JobState::ALL
        .iter()
        .filter_map(|s| {
            counts
                .iter()
                .find(|(c, _)| c == s)
                .map(|(_, n)| format!("{n} {s}"))
        })
        .collect();
    let _ = writeln!(out, "Jobs: {}", summary.join(", "));
    if costs.iter().any(|c| c.input_tokens + c.output_tokens > 0) {
        let sum = |f: fn(&JobCost) -> i64| costs.iter().map(f).sum::<i64>();
        let priced: Vec<f64> = costs.iter().filter_map(|c| c.cost_usd).collect();
        let cost = if priced.is_empty() {
            "no prices configured ([pricing])".to_owned()
        } else {
            format!("estimated cost {}", dollars(priced.iter().sum()))
        };
        let _ = writeln!(
            out,
            "Tokens of the jobs listed: {}; {cost}",
            tokens(
                sum(|c| c.input_tokens),
                sum(|c| c.cached_tokens),
                sum(|c| c.output_tokens),
                sum(|c| c.reasoning_tokens)
            )
        );
    }
    for s in stuck {
        let line = format!(
            "STUCK: batch {} of {} has been {} since {} ({})",
            or_dash(s.remote_id.as_deref()),
            s.job_id,
            s.status,
            s.since,
            age(&s.since, now)
        );
        let _ = writeln!(out, "{}", look.paint(&line, Some(Colour::Yellow)));
    }
    if rows.is_empty() {
        out.push_str("No jobs match.\n");
        return out;
    }
    out.push('\n');
    let mut cut = false;
    let mut fit = |text: &str, max: usize| {
        cut |= !look.wide && text.chars().count() > max;
        look.fit(text, max)
    };
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (why, fits) = reason(r);
            let requests = match r.request_count {
                Some(total) => progress(Some(total), r.requests_completed, r.requests_failed),
                None => "-".into(),
            };
            vec![
                r.id.clone(),
                fit(&escape(&r.file_name), 32),
                r.state.to_string(),
                or_dash(r.provider.as_deref()).to_owned(),
                or_dash(r.remote_status.as_deref()).to_owned(),
                requests,
                age(&r.created_at, now),
                deadline(&r.deadline_at, r.state, now),
                costs
                    .iter()
                    .find(|c| c.job_id == r.id)
                    .and_then(|c| c.cost_usd)
                    .map_or("-".into(), dollars),
                fit(&why, fits),
            ]
        })
        .collect();
    out.push_str(&styled_table(
        &[
            "JOB", "FILE", "STATE", "PROVIDER", "REMOTE", "REQUESTS", "AGE", "DEADLINE", "COST",
            "REASON",
        ],
        &body,
        look,
        |row, column| {
            (column == 2)
                .then(|| Colour::of_state(rows[row].state))
                .flatten()
        },
    ));
    if cut {
        out.push_str(
            "(cut short …: --wide shows every value whole, `batchwatch show JOB` everything)\n",
        );
    }
    out
}

/// Everything about one job, for `show`.
pub fn show(report: &JobReport, now: Timestamp, look: &Look) -> String {
    let j = &report.job;
    let mut out = String::new();
    let _ = writeln!(out, "Job {} ({})", escape(&j.id), escape(&j.file_name));
    let _ = writeln!(
        out,
        "  {:<13}{}",
        "state",
        look.paint(j.state.as_str(), Colour::of_state(j.state))
    );
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<13}{}", escape(&value));
    };
    if let Some(reason) = &j.reason {
        field(
            "reason",
            format!("{} ({})", reason, or_dash(j.reason_code.as_deref())),
        );
    }
    field("file", format!("{} ({} bytes)", j.path, j.size_bytes));
    field("provider", or_dash(j.provider.as_deref()).to_owned());
    if let Some(parent) = &report.parent_job_id {
        field("resubmits", format!("the undone requests of {parent}"));
    }
    if report.chain.len() > 1 {
        let links: Vec<String> = report
            .chain
            .iter()
            .map(|l| {
                let me = if l.id == j.id { " (this job)" } else { "" };
                format!("{} {} {}{me}", l.id, l.state, l.file_name)
            })
            .collect();
        field("chain", links.join(" → "));
    }
    if let Some(count) = j.request_count {
        field("requests", count.to_string());
    }
    if let (Some(endpoint), Some(model)) = (&j.endpoint, &j.model) {
        field("endpoint", format!("{endpoint} (model {model})"));
    }
    if let Some(sha) = &j.sha256 {
        field("sha256", sha.clone());
    }
    field(
        "created",
        format!("{} ({} ago)", j.created_at, age(&j.created_at, now)),
    );
    field(
        "deadline",
        format!("{} ({})", j.deadline_at, relative(&j.deadline_at, now)),
    );
    if let Some(at) = &j.cancel_requested_at {
        field(
            "cancel asked",
            format!("{at} ({})", or_dash(j.cancel_reason.as_deref())),
        );
    }
    if let Some(at) = &j.finished_at {
        field("finished", at.clone());
    }
    field("results", or_dash(j.results_dir.as_deref()).to_owned());
    if let Some(u) = report
        .usage
        .as_ref()
        .filter(|u| u.input_tokens + u.output_tokens > 0)
    {
        field(
            "tokens",
            tokens(
                u.input_tokens,
                u.cached_tokens,
                u.output_tokens,
                u.reasoning_tokens,
            ),
        );
    }
    if let Some(cost) = report.usage.as_ref().and_then(|u| u.cost_usd) {
        field("cost", format!("{} (estimated)", dollars(cost)));
    }
    if j.metadata != "{}" {
        field("metadata", j.metadata.clone());
    }

    out.push_str("\nEvents:\n");
    let events: Vec<Vec<String>> = report
        .events
        .iter()
        .map(|e| vec![e.at.clone(), e.state.to_string(), e.message.clone()])
        .collect();
    out.push_str(&indent(&styled_table(
        &["AT", "STATE", "WHAT"],
        &events,
        look,
        |row, column| {
            (column == 1)
                .then(|| Colour::of_state(report.events[row].state))
                .flatten()
        },
    )));

    if !report.notifications.is_empty() {
        out.push_str("\nNotifications:\n");
        let rows: Vec<Vec<String>> = report
            .notifications
            .iter()
            .map(|n| {
                let when = match &n.done_at {
                    Some(at) => at.clone(),
                    None => format!("next try {}", n.next_attempt_at),
                };
                vec![
                    n.target.clone(),
                    n.event.clone(),
                    n.state.clone(),
                    n.attempts.to_string(),
                    or_dash(n.last_outcome.as_deref()).to_owned(),
                    when,
                    n.webhook_id.clone(),
                ]
            })
            .collect();
        out.push_str(&indent(&styled_table(
            &[
                "TARGET",
                "EVENT",
                "STATE",
                "TRIES",
                "LAST",
                "WHEN",
                "WEBHOOK-ID",
            ],
            &rows,
            look,
            |row, column| {
                (column == 2).then(|| match report.notifications[row].state.as_str() {
                    "delivered" => Colour::Green,
                    "abandoned" => Colour::Red,
                    _ => Colour::Yellow,
                })
            },
        )));
    }

    for b in &report.batches {
        let s = &b.submission;
        let _ = writeln!(
            out,
            "\nBatch {} (part {}, attempt {}): {}, remote status {}, requests {}",
            escape(or_dash(s.remote_id.as_deref())),
            s.part,
            s.attempt,
            s.state,
            look.paint(
                &escape(s.status.as_ref().map_or("-", |st| st.as_str())),
                s.status.as_ref().and_then(Colour::of_status)
            ),
            progress(s.request_total, s.request_completed, s.request_failed),
        );
        let files = [
            ("input", &s.upload_id),
            ("output", &s.output_id),
            ("error", &s.error_output_id),
        ];
        let files: Vec<String> = files
            .iter()
            .filter_map(|(n, id)| id.as_ref().map(|id| format!("{n} {id}")))
            .collect();
        if !files.is_empty() {
            let _ = writeln!(out, "  files: {}", escape(&files.join(", ")));
        }
        if let Some(err) = &s.last_error {
            let _ = writeln!(out, "  last error: {}", escape(err));
        }
        if let Some(u) = &b.usage
            && let (Some(i), Some(o)) = (u.input_tokens, u.output_tokens)
        {
            let cost = u.cost_usd.map_or(String::new(), |c| {
                format!("; estimated cost {}", dollars(c))
            });
            let _ = writeln!(
                out,
                "  tokens: {}{cost}",
                tokens(
                    i,
                    u.cached_tokens.unwrap_or(0),
                    o,
                    u.reasoning_tokens.unwrap_or(0)
                )
            );
        }
        if let Some(limit) = &b.stuck_over {
            let since = b
                .history
                .iter()
                .find(|h| Some(&h.status) == s.status.as_ref())
                .map_or("-", |h| h.observed_at.as_str());
            let line = format!(
                "STUCK: {} since {since}, longer than alerts.stuck_after allows ({limit})",
                s.status.as_ref().map_or("-", |st| st.as_str()),
            );
            let _ = writeln!(out, "  {}", look.paint(&line, Some(Colour::Yellow)));
        }
        if let Some(at) = &s.cancel_requested_at {
            let _ = writeln!(
                out,
                "  cancel asked at {}, sent at {}",
                escape(at),
                escape(or_dash(s.cancel_sent_at.as_deref()))
            );
        }
        if !b.history.is_empty() {
            out.push_str(&indent(&history(&b.history, look)));
        }
    }
    out
}

/// A submission's status history.
pub fn history(rows: &[HistoryRow], look: &Look) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|h| {
            vec![
                h.observed_at.clone(),
                h.status.to_string(),
                progress(h.request_total, h.request_completed, h.request_failed),
            ]
        })
        .collect();
    styled_table(
        &["OBSERVED", "STATUS", "REQUESTS"],
        &body,
        look,
        |row, column| {
            (column == 1)
                .then(|| Colour::of_status(&rows[row].status))
                .flatten()
        },
    )
}

/// The daemons a shared database records, oldest first, the leader among them; for a SQLite database (`sole`), that
/// it has one daemon and no record of it.
pub fn instances(rows: &[InstanceRow], sole: bool) -> String {
    if sole {
        return "One daemon writes a SQLite database, behind its lock file; no instances are recorded.\n"
            .to_owned();
    }
    if rows.is_empty() {
        return "No daemon holds a lease on this database.\n".to_owned();
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|i| {
            vec![
                i.epoch.to_string(),
                i.name.clone(),
                format!("{} (pid {})", i.host, i.pid),
                i.started_at.clone(),
                i.heartbeat_at.clone(),
                if i.live { "live" } else { "ran out" }.to_owned(),
                if i.leader { "leader" } else { "" }.to_owned(),
                i.jobs.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "EPOCH",
            "NAME",
            "HOST",
            "STARTED",
            "HEARTBEAT",
            "LEASE",
            "ROLE",
            "JOBS HELD",
        ],
        &body,
    )
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// What `gc-remote` found, and with `--delete` what became of each file it deleted.
pub fn gc_remote(
    found: &[crate::daemon::housekeeping::remote::Found],
    outcomes: &[(String, String)],
    deleting: bool,
    as_json: bool,
) -> String {
    let outcome = |id: &str| {
        outcomes
            .iter()
            .find(|(f, _)| f == id)
            .map(|(_, o)| o.as_str())
    };
    if as_json {
        #[derive(Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            found: &'a crate::daemon::housekeeping::remote::Found,
            outcome: Option<&'a str>,
        }
        let rows: Vec<Row> = found
            .iter()
            .map(|f| Row {
                found: f,
                outcome: outcome(&f.file_id),
            })
            .collect();
        return json(&rows);
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|f| {
            let action = match (f.delete, outcome(&f.file_id)) {
                (true, Some(o)) => o.to_owned(),
                (true, None) if deleting => "-".to_owned(),
                (true, None) => "would delete".to_owned(),
                (false, _) => "keep".to_owned(),
            };
            vec![
                f.file_id.clone(),
                f.purpose.clone(),
                or_dash(f.created_at.as_deref()).to_owned(),
                or_dash(f.job_id.as_deref()).to_owned(),
                action,
                f.why.clone(),
            ]
        })
        .collect();
    let mut out = table(
        &["FILE", "PURPOSE", "CREATED", "JOB", "ACTION", "WHY"],
        &rows,
    );
    let deletable = found.iter().filter(|f| f.delete).count();
    let _ = if deleting {
        let done = outcomes
            .iter()
            .filter(|(_, o)| o == "deleted" || o == "gone")
            .count();
        writeln!(
            out,
            "{} files listed; {done} of {deletable} deletable deleted (or already gone); {} kept",
            found.len(),
            found.len() - deletable
        )
    } else {
        writeln!(
            out,
            "{} files listed; {deletable} would be deleted, {} kept (dry run: add --delete to delete them)",
            found.len(),
            found.len() - deletable
        )
    };
    out
}

/// What `prune` removed, or would remove.
pub fn pruned(
    p: &crate::daemon::housekeeping::retention::Pruned,
    settings: &crate::config::RetentionSettings,
    as_json: bool,
) -> String {
    if as_json {
        return json(p);
    }
    if !settings.any() {
        return "retention.* is not set: everything is kept\n".to_owned();
    }
    let verb = if p.dry_run { "would remove" } else { "removed" };
    let mut out = format!(
        "{verb}: {} files from done/, {} from failed/, {} results directories, the rows of {} jobs\n",
        p.done_files, p.failed_files, p.results_dirs, p.jobs
    );
    if p.database_bytes_before > 0 {
        let _ = writeln!(
            out,
            "database: {} bytes before, {} after",
            p.database_bytes_before, p.database_bytes_after
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let t = table(
            &["A", "LONG HEADER"],
            &[vec!["wide cell".into(), "x".into()]],
        );
        assert_eq!(t, "A          LONG HEADER\nwide cell  x\n");
    }

    #[test]
    fn progress_shows_failures_only_when_there_are_some() {
        assert_eq!(progress(Some(100), Some(95), Some(5)), "95/100, 5 failed");
        assert_eq!(progress(Some(10), Some(3), Some(0)), "3/10");
        assert_eq!(progress(None, None, None), "-");
    }

    #[test]
    fn a_deadline_is_said_ahead_or_behind_in_words_and_not_at_all_once_the_job_ended() {
        let now = clock::parse("2026-12-06T12:00:00.000Z").unwrap();
        assert_eq!(
            deadline("2026-12-06T15:00:00.000Z", JobState::Running, now),
            "in 3h"
        );
        assert_eq!(
            deadline("2026-12-06T09:30:00.000Z", JobState::Queued, now),
            "passed 2h 30m ago"
        );
        assert_eq!(
            deadline("2026-12-06T15:00:00.000Z", JobState::Completed, now),
            "-"
        );
    }

    #[test]
    fn long_names_are_shortened_with_an_ellipsis() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
