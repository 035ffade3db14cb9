//! The pages' HTML, as maud templates: checked when the binary is compiled, and every value
//! spliced in (`(...)`) escaped. Nothing here marks outside text as HTML: file names, reasons,
//! metadata and the service's messages are all text. No inline script or style (the CSP
//! allows neither): widths are SVG attributes, looks are classes of the one stylesheet, and
//! the one script is a file of its own ([`super::SCRIPT_PATH`]) that finds what it needs in
//! `data-` attributes.

use maud::{DOCTYPE, Markup, html};

use super::timeline::{self, CAP, HEIGHT, WIDTH};
use super::{Held, ICON_PATH, JobsQuery, REFRESH_SECONDS, SCRIPT_PATH, STYLESHEET_PATH};
use crate::clock::{self, Timestamp};
use crate::model::JobState;
use crate::report::{BatchReport, JobReport, dollars, progress, relative, tokens};
use crate::store::batches::Submission;
use crate::store::figures::StuckBatch;
use crate::store::jobs::JobLine;
use batchwatch_store::ops::lease::InstanceRow;

/// The frame of every page: the stylesheet and the script, the title, the way to the jobs and
/// the instances, and when the page was made. With scripts on, the page refreshes itself
/// every `data-refresh` seconds (the switch beside the time stops it).
pub fn page(title: &str, now: Timestamp, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · batchwatch" }
                link rel="stylesheet" href=(STYLESHEET_PATH);
                link rel="icon" href=(ICON_PATH) type="image/svg+xml";
                script src=(SCRIPT_PATH) defer {}
            }
            body data-refresh=(REFRESH_SECONDS) {
                header.top {
                    nav.site {
                        a.brand href="/" { "batchwatch" }
                        a href="/" { "Jobs" }
                        a href="/instances" { "Instances" }
                    }
                    span.muted {
                        "as of " span.abs.asof data-at=(clock::format(now)) { (absolute(now)) }
                        label.live hidden { input type="checkbox" checked; " live" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page that says what went wrong (no job of that id, a filter that is not one).
pub fn problem(title: &str, message: &str, now: Timestamp) -> Markup {
    page(
        title,
        now,
        html! {
            h1 { (title) }
            p { (message) }
            p { a href="/" { "All jobs" } }
        },
    )
}

/// `2026-11-22 10:00:03 UTC`.
fn absolute(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A stored time, relative to `now` and absolute (UTC; the script adds the browser's zone);
/// the text as stored when it does not parse.
fn when(at: &str, now: Timestamp) -> Markup {
    match clock::parse(at) {
        Some(t) => moment(t, now),
        None => html! { (at) },
    }
}

/// A time, relative to `now` and absolute (UTC; the script adds the browser's zone).
fn moment(t: Timestamp, now: Timestamp) -> Markup {
    let at = clock::format(t);
    html! {
        time datetime=(at) {
            (if t > now { relative(&at, now) } else { format!("{} ago", clock::humanize(clock::between(t, now))) })
        }
        " " span.abs data-at=(at) { (absolute(t)) }
    }
}

/// As [`when`], for a time that may be unset.
fn when_opt(at: Option<&str>, now: Timestamp) -> Markup {
    match at {
        Some(at) => when(at, now),
        None => html! { "–" },
    }
}

/// A job state as a badge.
fn state_badge(state: JobState) -> Markup {
    html! { span class={ "badge st-" (state.as_str()) } { (state.as_str()) } }
}

/// A remote status as a badge; statuses the service invents keep a neutral look.
fn status_badge(status: Option<&crate::model::BatchStatus>) -> Markup {
    match status {
        Some(s) => html! { span class={ "badge bs-" (status_class(s)) } { (s.as_str()) } },
        None => html! { "–" },
    }
}

/// The class of a status: its name when batchwatch knows it, `other` when not (an unknown
/// status is text from outside, never a class).
fn status_class(status: &crate::model::BatchStatus) -> &'static str {
    use crate::model::BatchStatus::*;
    match status {
        Validating => "validating",
        InProgress => "in_progress",
        Finalizing => "finalizing",
        Completed => "completed",
        Failed => "failed",
        Expired => "expired",
        Cancelling => "cancelling",
        Cancelled => "cancelled",
        Other(_) => "other",
    }
}

/// Requests completed, failed and remaining as a bar, with the figures beside it.
fn progress_bar(total: Option<i64>, completed: Option<i64>, failed: Option<i64>) -> Markup {
    let Some(total) = total.filter(|t| *t > 0) else {
        return html! { span.muted { (progress(total, completed, failed)) } };
    };
    let share = |n: Option<i64>| (n.unwrap_or(0).clamp(0, total) as f64) * 100.0 / total as f64;
    let done = share(completed);
    let bad = share(failed).min(100.0 - done);
    let label = progress(Some(total), completed, failed);
    html! {
        span.progress {
            svg.bar viewBox="0 0 100 8" preserveAspectRatio="none" role="img" aria-label=(label) {
                rect.rest x="0" y="0" width="100" height="8" {}
                rect.done x="0" y="0" width=(format!("{done:.2}")) height="8" {}
                rect.bad x=(format!("{done:.2}")) y="0" width=(format!("{bad:.2}")) height="8" {}
            }
            span.figures { (label) }
        }
    }
}

/// The link to the jobs list with `query`'s filters and `after` (a page's start).
pub fn jobs_href(query: &JobsQuery, state: Option<&str>, after: Option<&str>) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    if let Some(file) = query.file() {
        pairs.push(("file", file));
    }
    if let Some(model) = query.model() {
        pairs.push(("model", model));
    }
    let limit = query.limit.map(|l| l.to_string());
    if let Some(limit) = &limit {
        pairs.push(("limit", limit));
    }
    if let Some(after) = after {
        pairs.push(("after", after));
    }
    if pairs.is_empty() {
        return "/".to_owned();
    }
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("/?{}", query.join("&"))
}

/// `text` as a query value: everything but the unreserved characters percent-encoded.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The jobs list.
pub struct Jobs<'a> {
    pub query: &'a JobsQuery,
    pub counts: &'a [(JobState, i64)],
    pub stuck: &'a [StuckBatch],
    pub held: &'a Held,
    pub rows: &'a [JobLine],
    /// Where the next page starts, when there is one.
    pub next: Option<&'a str>,
    pub now: Timestamp,
}

/// `/`: counts per state, the filters, a page of jobs, and the way to the next.
pub fn jobs(j: &Jobs) -> Markup {
    let total: i64 = j.counts.iter().map(|(_, n)| n).sum();
    let chosen = j.query.state();
    let body = html! {
        h1 { "Jobs" }
        nav.counts aria-label="Jobs by state" {
            a class={ "count" @if chosen.is_none() { " chosen" } } href=(jobs_href(j.query, None, None)) {
                span.n { (total) } " all"
            }
            @for state in JobState::ALL {
                @let n = j.counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                @if n > 0 || chosen == Some(*state) {
                    a class={ "count st-" (state.as_str()) @if chosen == Some(*state) { " chosen" } }
                        href=(jobs_href(j.query, Some(state.as_str()), None)) {
                        span.n { (n) } " " (state.as_str())
                    }
                }
            }
        }
        (held(j.held, j.now))
        @if !j.stuck.is_empty() {
            section.stuck {
                h2 { "Stuck batches (" (j.stuck.len()) ")" }
                ul {
                    @for s in j.stuck {
                        li {
                            "batch " a href={ "/batches/" (s.id) } { (s.remote_id.as_deref().unwrap_or("–")) }
                            " of " a href={ "/jobs/" (s.job_id) } { (s.job_id) }
                            " has been " (s.status.as_str()) " since " (when(&s.since, j.now))
                        }
                    }
                }
            }
        }
        form.filters method="get" action="/" {
            label {
                "State "
                select name="state" {
                    option value="" { "any" }
                    @for state in JobState::ALL {
                        option value=(state.as_str()) selected[chosen == Some(*state)] { (state.as_str()) }
                    }
                }
            }
            label {
                "File "
                input type="search" name="file" value=(j.query.file().unwrap_or(""))
                    placeholder="part of a name, or a glob: eval-*.jsonl";
            }
            label {
                "Model "
                input.model type="search" name="model" value=(j.query.model().unwrap_or(""))
                    placeholder="gpt-4o-mini";
            }
            button type="submit" { "Filter" }
            @if chosen.is_some() || j.query.file().is_some() || j.query.model().is_some() {
                " " a href="/" { "clear" }
            }
        }
        @if j.rows.is_empty() {
            p.empty { @if total == 0 { "No jobs yet." } @else { "No jobs match." } }
        } @else {
            div.scroll {
                table.jobs {
                    thead { tr {
                        th { "File" } th { "State" } th { "Model" } th { "Requests" }
                        th { "Age" } th { "Deadline" } th.num { "Cost" } th { "Reason" }
                    } }
                    tbody {
                        @for r in j.rows {
                            tr {
                                td.file {
                                    a href={ "/jobs/" (r.id) } { (r.file_name) }
                                    br; span.id { (r.id) }
                                }
                                td { (state_badge(r.state)) }
                                td { (r.model.as_deref().unwrap_or("–")) }
                                td { (progress_bar(r.request_count, r.requests_completed, r.requests_failed)) }
                                td { (when(&r.created_at, j.now)) }
                                td { @if r.state.is_terminal() { "–" } @else { (when(&r.deadline_at, j.now)) } }
                                td.num { (r.cost_usd.map_or("–".to_owned(), dollars)) }
                                td.reason { (reason(r)) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if j.query.after.is_some() {
                a href=(jobs_href(j.query, chosen.map(JobState::as_str), None)) { "← Newest" }
            }
            @if let Some(next) = j.next {
                a href=(jobs_href(j.query, chosen.map(JobState::as_str), Some(next))) { "Older →" }
            }
        }
    };
    page("Jobs", j.now, body)
}

/// What the gate holds back, called out above the jobs: nothing when it holds nothing (or
/// when the pages are not the daemon's: `batchwatch serve` cannot know).
fn held(held: &Held, now: Timestamp) -> Markup {
    if held.is_empty() {
        return html! {};
    }
    html! {
        section.held {
            h2 { "Held back" }
            ul {
                @if let Some(p) = &held.paused {
                    li {
                        strong { "All API work is paused" }
                        @match p.cause {
                            crate::daemon::gate::Closed::KeyRefused => { " (the API refused the key)" }
                            crate::daemon::gate::Closed::RouteMissing => { " (the API has no such route: api.base_url)" }
                        }
                        " since " (moment(p.since, now))
                        "; next try " (moment(p.next_probe, now)) ": " (p.message)
                    }
                }
                @if let Some(until) = held.submissions_until {
                    li {
                        strong { "New submissions are held" }
                        " (the API quota is exhausted) until " (moment(until, now))
                        "; running batches are still followed"
                    }
                }
                @for (model, until) in &held.models {
                    li {
                        "New batches of " strong { (model) } " are held (the enqueued-token limit) until "
                        (moment(*until, now))
                    }
                }
            }
        }
    }
}

/// Why a job ended or waits; while it runs, the last error of its latest batches.
fn reason(r: &JobLine) -> Markup {
    match (&r.reason_code, &r.last_error) {
        (Some(code), _) if !code.is_empty() => html! {
            span.code { (code) }
            @if let Some(reason) = &r.reason { br; span.muted { (reason) } }
        },
        (_, Some(error)) if !r.state.is_terminal() && !error.is_empty() => {
            html! { span.muted { (error) } }
        }
        _ => html! { "–" },
    }
}

/// `/jobs/{id}`: everything about a job.
pub fn job(report: &JobReport, now: Timestamp) -> Markup {
    let j = &report.job;
    let body = html! {
        h1 { (j.file_name) " " (state_badge(j.state)) }
        p.id { (j.id) }
        @if j.reason.is_some() || j.reason_code.is_some() || j.cancel_reason.is_some() {
            section.why {
                h2 { @if j.state.is_terminal() { "Why it ended" } @else { "Why it waits" } }
                p {
                    @if let Some(code) = &j.reason_code { span.code { (code) } " " }
                    @if let Some(reason) = &j.reason { (reason) }
                    @if let Some(line) = j.reason_line { " (line " (line) ")" }
                }
                @if let Some(cancel) = &j.cancel_reason {
                    p { "Cancel asked (" (cancel) ") " (when_opt(j.cancel_requested_at.as_deref(), now)) }
                }
            }
        }
        dl.facts {
            dt { "Requests" } dd { (j.request_count.map_or("–".to_owned(), |n| n.to_string())) }
            dt { "Model" } dd { (j.model.as_deref().unwrap_or("–")) }
            dt { "Endpoint" } dd { (j.endpoint.as_deref().unwrap_or("–")) }
            dt { "Claimed" } dd { (when(&j.created_at, now)) }
            dt { "Deadline" } dd { (when(&j.deadline_at, now)) }
            dt { "Finished" } dd { (when_opt(j.finished_at.as_deref(), now)) }
            dt { "Batches created" } dd { (j.attempts) }
            dt { "File" } dd { code { (j.path) } " (" (j.size_bytes) " bytes)" }
            dt { "Results" } dd {
                @if let Some(dir) = &j.results_dir { code { (dir) } } @else { "–" }
            }
            @if let Some(sha) = &j.sha256 { dt { "SHA-256" } dd { code { (sha) } } }
            @if j.metadata != "{}" { dt { "Metadata" } dd { code { (j.metadata) } } }
        }
        section.usage {
            h2 { "Usage and cost" }
            @match &report.usage {
                Some(u) if u.input_tokens + u.output_tokens > 0 => {
                    p {
                        (tokens(u.input_tokens, u.cached_tokens, u.output_tokens, u.reasoning_tokens))
                        @if let Some(cost) = u.cost_usd { "; estimated cost " strong { (dollars(cost)) } }
                        @else { "; no price configured ([pricing])" }
                    }
                }
                _ => p.muted { "No usage reported yet." },
            }
        }
        @if report.chain.len() > 1 || report.parent_job_id.is_some() {
            section.chain {
                h2 { "Resubmission chain" }
                ol {
                    @for link in &report.chain {
                        li {
                            @if link.id == j.id { strong { (link.file_name) } " (this job)" }
                            @else { a href={ "/jobs/" (link.id) } { (link.file_name) } }
                            " " (state_badge(link.state)) " " span.id { (link.id) }
                        }
                    }
                }
            }
        }
        section.batches {
            h2 { "Batches" }
            @if report.batches.is_empty() { p.muted { "None yet." } }
            @for b in &report.batches { (batch(b, now, true)) }
        }
        section.events {
            h2 { "Events" }
            div.scroll {
                table.events {
                    thead { tr { th { "At" } th { "State" } th { "What" } } }
                    tbody {
                        @for e in &report.events {
                            tr { td { (when(&e.at, now)) } td { (state_badge(e.state)) } td.what { (e.message) } }
                        }
                    }
                }
            }
        }
    };
    page(&j.file_name, now, body)
}

/// One batch of a job: its figures, files, timeline and history; with `link`, a link to its
/// own page.
pub fn batch(b: &BatchReport, now: Timestamp, link: bool) -> Markup {
    let s = &b.submission;
    html! {
        article.batch id={ "batch-" (s.id) } {
            h3 {
                @if link { a href={ "/batches/" (s.id) } { (remote_name(s)) } } @else { (remote_name(s)) }
                " " (status_badge(s.status.as_ref()))
                " " span.muted { "part " (s.part) ", attempt " (s.attempt) ", " (s.state.as_str()) }
            }
            (progress_bar(s.request_total.or(Some(s.part_requests)), s.request_completed, s.request_failed))
            @if let Some(limit) = &b.stuck_over {
                p.stuck { "Stuck: longer in " (s.status.as_ref().map_or("–", |st| st.as_str())) " than " (limit) " allows" }
            }
            (timeline_svg(b, now))
            (counts_svg(b, now))
            dl.facts {
                dt { "Input file" } dd { code { (s.upload_id.as_deref().unwrap_or("–")) } }
                dt { "Output file" } dd { code { (s.output_id.as_deref().unwrap_or("–")) } }
                dt { "Error file" } dd { code { (s.error_output_id.as_deref().unwrap_or("–")) } }
                @if let Some(u) = &b.usage {
                    @if let (Some(i), Some(o)) = (u.input_tokens, u.output_tokens) {
                        dt { "Tokens" } dd {
                            (tokens(i, u.cached_tokens.unwrap_or(0), o, u.reasoning_tokens.unwrap_or(0)))
                            @if let Some(c) = u.cost_usd { "; estimated cost " (dollars(c)) }
                        }
                    }
                }
                @if let Some(e) = &s.last_error { dt { "Last error" } dd { (e) } }
                @if let Some(errors) = &s.errors { dt { "Service's errors" } dd { code { (errors) } } }
                @if let Some(missing) = &s.results_missing { dt { "Results missing" } dd { (missing) } }
                @if let Some(at) = &s.cancel_requested_at {
                    dt { "Cancel asked" } dd { (when(at, now)) ", sent " (when_opt(s.cancel_sent_at.as_deref(), now)) }
                }
            }
            @if !b.history.is_empty() {
                details id={ "history-" (s.id) } {
                    summary { "Status history (" (b.history.len()) " rows)" }
                    div.scroll { table.history {
                        thead { tr { th { "Observed" } th { "Status" } th { "Requests" } } }
                        tbody {
                            @for h in &b.history {
                                tr {
                                    td { (when(&h.observed_at, now)) }
                                    td { (status_badge(Some(&h.status))) }
                                    td { (progress(h.request_total, h.request_completed, h.request_failed)) }
                                }
                            }
                        }
                    } }
                }
            }
        }
    }
}

fn remote_name(s: &Submission) -> String {
    s.remote_id
        .clone()
        .unwrap_or_else(|| format!("batch {} (not created yet)", s.id))
}

/// The batch's status timeline as an SVG bar: one rect per status, as wide as it lasted
/// (a final status a cap at the end), each with its times in a title.
fn timeline_svg(b: &BatchReport, now: Timestamp) -> Markup {
    let segments = timeline::segments(&b.history, now);
    if segments.is_empty() {
        return html! {};
    }
    let label: Vec<String> = segments
        .iter()
        .map(|s| format!("{} {}", s.status, clock::humanize(s.lasted)))
        .collect();
    html! {
        figure.timeline {
            svg.timeline viewBox=(format!("0 0 {WIDTH} 20")) preserveAspectRatio="none"
                role="img" aria-label={ "Status timeline: " (label.join(", ")) }
                data-cap=(CAP) {
                @for s in &segments {
                    rect class={ "seg bs-" (status_class(&s.status)) }
                        x=(format!("{:.3}", s.x)) y="0" width=(format!("{:.3}", s.width)) height="20"
                        data-status=(s.status.as_str()) data-ms=(s.lasted.as_millis().to_string()) {
                        title {
                            (s.status.as_str()) ": " (s.from) " → "
                            (s.until.as_deref().unwrap_or(if s.status.is_terminal() { "(final)" } else { "now" }))
                            " (" (clock::humanize(s.lasted)) ")"
                        }
                    }
                }
            }
            figcaption {
                @for s in &segments {
                    span class={ "key bs-" (status_class(&s.status)) } {
                        (s.status.as_str())
                        @if !s.status.is_terminal() || s.until.is_some() { " " (clock::humanize(s.lasted)) }
                    }
                    " "
                }
            }
        }
    }
}

/// The batch's requests completed and failed over time, as two step lines over its life.
fn counts_svg(b: &BatchReport, now: Timestamp) -> Markup {
    let Some(c) = timeline::counts(&b.history, now) else {
        return html! {};
    };
    html! {
        figure.counts {
            svg.counts viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) preserveAspectRatio="none"
                role="img" aria-label={ "Requests over time, of " (c.total) ": completed and failed" } {
                polyline.bad points=(c.failed) {}
                polyline.done points=(c.completed) {}
            }
            figcaption {
                span.key.done { "completed" } " " span.key.bad { "failed" }
                " of " (c.total) " requests, " (when(&c.from, now)) " to " (when(&c.until, now))
            }
        }
    }
}

/// `/instances`: the daemons that share the database, oldest first, with the one that leads;
/// for a SQLite database (`sole`), that one daemon writes it and none is recorded.
pub fn instances(rows: &[InstanceRow], sole: bool, now: Timestamp) -> Markup {
    let body = html! {
        h1 { "Instances" }
        @if sole {
            p.empty { "One daemon writes a SQLite database, behind its lock file; no instances are recorded." }
        } @else if rows.is_empty() {
            p.empty { "No daemon has registered with this database." }
        } @else {
            div.scroll {
                table.instances {
                    thead { tr {
                        th { "Instance" } th { "Host" } th.num { "Pid" } th { "Lease" }
                        th { "Started" } th { "Last renewed" } th.num { "Jobs held" }
                    } }
                    tbody {
                        @for i in rows {
                            tr {
                                td { (i.name) " " span.id { "epoch " (i.epoch) }
                                    @if i.leader { " " span.badge.leader { "leader" } } }
                                td { (i.host) }
                                td.num { (i.pid) }
                                td { @if i.live { span.badge.st-running { "live" } } @else { span.badge.st-failed { "run out" } } }
                                td { (when(&i.started_at, now)) }
                                td { (when(&i.heartbeat_at, now)) }
                                td.num { (i.jobs) }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Instances", now, body)
}

/// `/batches/{id}`: one batch, and the job it belongs to.
pub fn batch_page(b: &BatchReport, file_name: &str, now: Timestamp) -> Markup {
    let s = &b.submission;
    let body = html! {
        p { "Batch of " a href={ "/jobs/" (s.job_id) } { (file_name) } " " span.id { (s.job_id) } }
        (batch(b, now, false))
    };
    page(&remote_name(s), now, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_gate_holds_back_is_called_out_with_until_when_and_nothing_when_it_holds_nothing() {
        let now = clock::parse("2026-11-22T10:00:00.000Z").unwrap();
        let later = |secs| clock::add(now, std::time::Duration::from_secs(secs));
        assert_eq!(held(&Held::default(), now).into_string(), "");
        let shown = held(
            &Held {
                paused: Some(crate::daemon::gate::Pause {
                    cause: crate::daemon::gate::Closed::KeyRefused,
                    since: now,
                    message: "401 <b>invalid_api_key</b>".into(),
                    next_probe: later(60),
                    key_reread: true,
                    route_hinted: false,
                }),
                submissions_until: Some(later(600)),
                models: vec![("gpt-4o".into(), later(120))],
            },
            now,
        )
        .into_string();
        for expected in [
            "All API work is paused",
            "the API refused the key",
            "401 &lt;b&gt;invalid_api_key&lt;/b&gt;",
            "New submissions are held",
            "in 10m",
            "<strong>gpt-4o</strong>",
            "the enqueued-token limit",
            "in 2m",
        ] {
            assert!(shown.contains(expected), "{expected}: {shown}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded_so_a_name_cannot_add_a_parameter() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode("job_01ABC-x.y~"), "job_01ABC-x.y~");
    }
}
