//! A batch's status timeline, from its status history: one segment per status, as long as it
//! lasted; and its request counts over time ([`counts`]). Pure: the rows and a time in, the
//! shapes out (the page draws them as SVG).
//!
//! Rows in a row with the same status (the request counts moved) make one segment. A segment
//! lasts from its first row to the next segment's; the last one, while the batch runs, until
//! `now`. A final status (completed, failed, expired, cancelled) lasts for ever: it is drawn as
//! a cap of fixed width at the end, and the other segments share the rest of the bar in
//! proportion to how long each lasted.

use std::time::Duration;

use crate::clock::{self, Timestamp};
use crate::model::BatchStatus;
use crate::store::history::HistoryRow;

/// How wide the bar is, in the SVG's units.
pub const WIDTH: f64 = 1000.0;

/// How wide the cap of a final status is.
pub const CAP: f64 = 40.0;

/// One status, where it is drawn and how long it lasted.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub status: BatchStatus,
    /// Its first row's `observed_at`, as stored.
    pub from: String,
    /// The next segment's first `observed_at`; `None` for a final status, and for the last
    /// status of a running batch (which lasts until now).
    pub until: Option<String>,
    /// How long it lasted; zero for a final status.
    pub lasted: Duration,
    /// Where it starts and how wide it is, in `0..WIDTH`.
    pub x: f64,
    pub width: f64,
}

/// The segments of `rows` (a batch's history, oldest first) at `now`.
pub fn segments(rows: &[HistoryRow], now: Timestamp) -> Vec<Segment> {
    // The first row of each run of one status.
    let mut starts: Vec<&HistoryRow> = Vec::new();
    for row in rows {
        if starts.last().is_none_or(|last| last.status != row.status) {
            starts.push(row);
        }
    }
    let time = |row: &HistoryRow| clock::parse(&row.observed_at).unwrap_or(now);
    let mut out: Vec<Segment> = starts
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let next = starts.get(i + 1);
            let ends = row.status.is_terminal() && next.is_none();
            let lasted = match next {
                Some(next) => clock::between(time(row), time(next)),
                None if ends => Duration::ZERO,
                None => clock::between(time(row), now),
            };
            Segment {
                status: row.status.clone(),
                from: row.observed_at.clone(),
                until: next.map(|n| n.observed_at.clone()),
                lasted,
                x: 0.0,
                width: 0.0,
            }
        })
        .collect();
    let capped = out.last().is_some_and(|s| s.status.is_terminal());
    let timed = out.len() - usize::from(capped);
    let room = if capped && timed > 0 {
        WIDTH - CAP
    } else {
        WIDTH
    };
    let total: f64 = out.iter().map(|s| s.lasted.as_secs_f64()).sum();
    let mut x = 0.0;
    for (i, segment) in out.iter_mut().enumerate() {
        segment.width = if i >= timed {
            WIDTH - x
        } else if total > 0.0 {
            room * segment.lasted.as_secs_f64() / total
        } else {
            // Every status seen at one instant: shown alike.
            room / timed as f64
        };
        segment.x = x;
        x += segment.width;
    }
    out
}

/// How tall the request counts chart is, in the SVG's units (as wide as the bar: [`WIDTH`]).
pub const HEIGHT: f64 = 60.0;

/// A batch's requests completed and failed over time, as two step lines for an SVG
/// `polyline`'s `points` (y grows downwards: the top is `total`).
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    /// The most requests any row counted: the chart's top.
    pub total: i64,
    pub completed: String,
    pub failed: String,
    /// The first row with counts, and the chart's end: the last row's time for an ended batch,
    /// `now` for a running one.
    pub from: String,
    pub until: String,
}

/// The request counts of `rows` (a batch's history, oldest first) at `now`, when at least
/// two rows count requests (one point is no line). A count holds until the next row: the
/// lines step, as the counts did.
pub fn counts(rows: &[HistoryRow], now: Timestamp) -> Option<Counts> {
    let counted: Vec<(Timestamp, &HistoryRow)> = rows
        .iter()
        .filter(|r| r.request_total.is_some_and(|t| t > 0))
        .filter_map(|r| Some((clock::parse(&r.observed_at)?, r)))
        .collect();
    let [(first, first_row), .., (last, last_row)] = counted.as_slice() else {
        return None;
    };
    let ended = last_row.status.is_terminal();
    let end = if ended { *last } else { now.max(*last) };
    let span = clock::between(*first, end).as_secs_f64();
    let total = counted
        .iter()
        .filter_map(|(_, r)| r.request_total)
        .max()
        .unwrap_or(1);
    let x = |t: Timestamp| match span > 0.0 {
        true => WIDTH * clock::between(*first, t).as_secs_f64() / span,
        false => 0.0,
    };
    let y =
        |n: Option<i64>| HEIGHT - HEIGHT * (n.unwrap_or(0).clamp(0, total) as f64) / total as f64;
    let line = |count: fn(&HistoryRow) -> Option<i64>| {
        let mut points = Vec::with_capacity(counted.len() * 2);
        for (i, (t, row)) in counted.iter().enumerate() {
            let next = counted.get(i + 1).map_or(end, |(t, _)| *t);
            let level = y(count(row));
            points.push(format!("{:.1},{level:.1}", x(*t)));
            points.push(format!("{:.1},{level:.1}", x(next)));
        }
        points.join(" ")
    };
    Some(Counts {
        total,
        completed: line(|r| r.request_completed),
        failed: line(|r| r.request_failed),
        from: first_row.observed_at.clone(),
        until: match ended {
            true => last_row.observed_at.clone(),
            false => clock::format(now),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: &str, status: &str) -> HistoryRow {
        HistoryRow {
            id: 0,
            batch_id: 1,
            observed_at: format!("2026-11-22T{at}.000Z"),
            status: BatchStatus::parse(status),
            request_total: None,
            request_completed: None,
            request_failed: None,
            raw: "{}".into(),
        }
    }

    fn now() -> Timestamp {
        clock::parse("2026-11-22T11:00:00.000Z").unwrap()
    }

    #[test]
    fn an_ended_batch_has_a_segment_per_status_in_proportion_and_a_cap_for_its_end() {
        let rows = [
            row("10:00:00", "validating"),
            row("10:01:00", "in_progress"),
            row("10:04:00", "finalizing"),
            row("10:05:00", "completed"),
        ];
        let s = segments(&rows, now());
        let statuses: Vec<&str> = s.iter().map(|s| s.status.as_str()).collect();
        assert_eq!(
            statuses,
            ["validating", "in_progress", "finalizing", "completed"]
        );
        let room = WIDTH - CAP;
        assert!((s[0].width - room / 5.0).abs() < 1e-9);
        assert!((s[1].width - room * 3.0 / 5.0).abs() < 1e-9);
        assert!((s[2].width - room / 5.0).abs() < 1e-9);
        assert!((s[3].width - CAP).abs() < 1e-9);
        assert_eq!(s[3].lasted, Duration::ZERO);
        assert!((s[3].x + s[3].width - WIDTH).abs() < 1e-9);
        assert_eq!(s[1].until.as_deref(), Some("2026-11-22T10:04:00.000Z"));
    }

    #[test]
    fn rows_of_one_status_make_one_segment_and_a_running_batch_lasts_until_now() {
        let rows = [
            row("10:00:00", "validating"),
            row("10:30:00", "in_progress"),
            row("10:40:00", "in_progress"),
        ];
        let s = segments(&rows, now());
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].lasted, Duration::from_secs(30 * 60));
        assert_eq!(s[1].until, None);
        assert!((s[0].width - WIDTH / 2.0).abs() < 1e-9);
        assert!((s[1].width - WIDTH / 2.0).abs() < 1e-9);
    }

    fn counted(at: &str, status: &str, total: i64, completed: i64, failed: i64) -> HistoryRow {
        HistoryRow {
            request_total: Some(total),
            request_completed: Some(completed),
            request_failed: Some(failed),
            ..row(at, status)
        }
    }

    #[test]
    fn request_counts_step_from_row_to_row_over_the_batch_s_life() {
        let rows = [
            row("10:00:00", "validating"),
            counted("10:00:00", "in_progress", 10, 0, 0),
            counted("10:30:00", "in_progress", 10, 5, 1),
            counted("10:40:00", "completed", 10, 9, 1),
        ];
        let c = counts(&rows, now()).expect("three rows count requests");
        assert_eq!(c.total, 10);
        // 0 until 10:30 (x 750 of 1000), 5 until 10:40, 9 at the end.
        assert_eq!(
            c.completed,
            "0.0,60.0 750.0,60.0 750.0,30.0 1000.0,30.0 1000.0,6.0 1000.0,6.0"
        );
        assert_eq!(
            c.failed,
            "0.0,60.0 750.0,60.0 750.0,54.0 1000.0,54.0 1000.0,54.0 1000.0,54.0"
        );
        assert_eq!(c.until, "2026-11-22T10:40:00.000Z");
    }

    #[test]
    fn a_running_batch_s_counts_reach_now_and_one_counted_row_draws_no_chart() {
        let rows = [
            counted("10:00:00", "in_progress", 4, 0, 0),
            counted("10:20:00", "in_progress", 4, 2, 0),
        ];
        let c = counts(&rows, now()).expect("two rows count requests");
        assert_eq!(c.completed, "0.0,60.0 333.3,60.0 333.3,30.0 1000.0,30.0");
        assert_eq!(c.until, clock::format(now()));
        assert_eq!(counts(&rows[..1], now()), None);
        assert_eq!(counts(&[row("10:00:00", "in_progress")], now()), None);
    }

    #[test]
    fn no_history_draws_nothing_and_a_batch_ended_at_once_is_all_cap() {
        assert!(segments(&[], now()).is_empty());
        let s = segments(&[row("10:00:00", "failed")], now());
        assert_eq!(s.len(), 1);
        assert!((s[0].width - WIDTH).abs() < 1e-9);
    }
}
