//! The batch lifecycle in simulated time.
//!
//! Each batch has at most one next event (validation ends, processing ends, expiry, finalizing
//! ends, cancelling ends, it vanishes) at a simulated instant fixed when it entered its status.
//! [`State::advance`] applies every due event across all batches in time order, ties broken by
//! creation order, so batches that interact (the enqueued-token limit) always see each other
//! in the same order. Timestamps are the events' scheduled instants, not when they were
//! applied. It runs whenever the state is locked, and from a background ticker that sleeps
//! until the next event so batches move even when nobody is polling.
//!
//! The events wait in a heap of (instant, batch index), so a lock with nothing due costs the
//! same with 20,000 batches as with one. Whatever changes a batch's status pushes its new next
//! event ([`State::schedule`]); the entry it had before stays in the heap and is dropped when
//! it comes up, because it no longer matches what [`next_event`] says for the batch.
//!
//! Input files are validated on a blocking thread when a batch is created. An event whose
//! validation has not finished holds back every later event until it has, so the outcome never
//! depends on how fast validation runs; a very large file can pause the other batches for the
//! real seconds its validation takes.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::model::clock::{SimMs, ms, secs};
use crate::model::{
    Admission, Api, Batch, BatchErrorEntry, FileEntry, FileReady, Served, StoredFile, Transition,
    Validation,
};
use crate::output::{self, OutputJob, Sink};
use crate::state::{Shared, State};
use batchwatch_core::batchfile::{Rule, Violation};
use batchwatch_core::model::BatchStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    EndValidation,
    Finalize,
    Expire,
    Complete,
    Cancelled,
    Vanish,
}

/// What [`State::advance`] left behind.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Nothing is due; the next event, if any, is at this instant.
    Idle(Option<SimMs>),
    /// The earliest due event waits for a file validation to finish.
    Blocked,
}

/// A create request that passed the request checks.
#[derive(Debug)]
pub(crate) struct NewBatch {
    pub(crate) api: Api,
    /// The requests' summary when they were checked with the create (Anthropic).
    pub(crate) admission: Option<Admission>,
    pub(crate) input_file_id: String,
    pub(crate) endpoint: String,
    pub(crate) completion_window: String,
    pub(crate) metadata: Option<Map<String, Value>>,
    pub(crate) output_expires_after: Option<i64>,
}

const HEX: &[u8] = b"0123456789abcdef";
const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The purpose of an Anthropic batch's results file: held as a file, served only at
/// `/v1/messages/batches/{id}/results`, never by the Files API.
pub(crate) const RESULTS_PURPOSE: &str = "message_batch_results";

/// How a batch ended, for the lines of its requests that were not processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Completed,
    Expired,
    Cancelled,
}

// Salts of the per-batch fault draws.
const SALT_STUCK: u64 = 0x7374_7563;
const SALT_VANISH: u64 = 0x7661_6e69;

fn next_event(batch: &Batch, state: &State) -> Option<(SimMs, Event)> {
    if batch.vanished {
        return None;
    }
    let timing = &state.timing;
    let due = match batch.status {
        // Anthropic checks the requests when the batch is created: none waits in validation.
        BatchStatus::Validating => Some((
            batch.created_at
                + match batch.api {
                    Api::OpenAi => timing.validating,
                    Api::Anthropic => 0,
                },
            Event::EndValidation,
        )),
        BatchStatus::InProgress => {
            let end = batch.in_progress_at.unwrap_or(batch.created_at) + batch.run_ms;
            Some(if batch.expires_at < end {
                (batch.expires_at, Event::Expire)
            } else {
                (end, Event::Finalize)
            })
        }
        BatchStatus::Finalizing if !batch.stuck => Some((
            batch.finalizing_at.unwrap_or(batch.created_at) + timing.finalizing,
            Event::Complete,
        )),
        BatchStatus::Cancelling => Some((
            batch.cancelling_at.unwrap_or(batch.created_at) + timing.cancelling,
            Event::Cancelled,
        )),
        _ => None,
    };
    match (batch.vanish_at, due) {
        (Some(v), Some((t, _))) if v <= t => Some((v, Event::Vanish)),
        (Some(v), None) => Some((v, Event::Vanish)),
        (_, due) => due,
    }
}

/// The parameter a broken rule is about, for `errors.data[].param`.
fn param_of(rule: Rule) -> Option<&'static str> {
    match rule {
        Rule::MissingCustomId | Rule::DuplicateCustomId => Some("custom_id"),
        Rule::InvalidMethod => Some("method"),
        Rule::MissingUrl | Rule::UrlMismatch => Some("url"),
        Rule::MissingBody => Some("body"),
        Rule::MissingModel | Rule::ModelTooLong | Rule::MixedModels => Some("body.model"),
        _ => None,
    }
}

/// `1234567` as `1,234,567`, as the real token-limit message prints limits.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl State {
    /// Applies every event due by now, in simulated-time order.
    pub(crate) fn advance(&mut self) -> Progress {
        let now = self.clock.now();
        while let Some(&Reverse((at, i))) = self.events.peek() {
            let Some((_, event)) = next_event(&self.batches[i], self).filter(|(t, _)| *t == at)
            else {
                // The batch moved on since this entry was pushed.
                self.events.pop();
                continue;
            };
            if at > now {
                return Progress::Idle(Some(at));
            }
            if event == Event::EndValidation
                && matches!(self.batches[i].validation, Validation::Pending)
            {
                return Progress::Blocked;
            }
            self.events.pop();
            self.apply(i, event, at);
            self.schedule(i);
        }
        Progress::Idle(None)
    }

    /// Pushes batch `i`'s next event, if it has one; call after anything that changes it.
    pub(crate) fn schedule(&mut self, i: usize) {
        if let Some((at, _)) = next_event(&self.batches[i], self) {
            self.events.push(Reverse((at, i)));
        }
    }

    fn apply(&mut self, i: usize, event: Event, at: SimMs) {
        tracing::debug!(batch = %self.batches[i].id, ?event, "batch event");
        match event {
            Event::EndValidation => self.end_validation(i, at),
            Event::Finalize => {
                let batch = &mut self.batches[i];
                batch.finalizing_at = Some(at);
                batch.record(BatchStatus::Finalizing, at);
            }
            Event::Expire => {
                let batch = &mut self.batches[i];
                batch.processed_final = Some(batch.processed(at));
                batch.expired_at = Some(at);
                batch.record(BatchStatus::Expired, at);
                self.write_outputs(i, at, Ending::Expired);
            }
            Event::Complete => {
                let batch = &mut self.batches[i];
                batch.processed_final = Some(batch.total);
                batch.completed_at = Some(at);
                batch.record(BatchStatus::Completed, at);
                self.write_outputs(i, at, Ending::Completed);
            }
            Event::Cancelled => {
                let batch = &mut self.batches[i];
                batch.cancelled_at = Some(at);
                batch.record(BatchStatus::Cancelled, at);
                self.write_outputs(i, at, Ending::Cancelled);
            }
            Event::Vanish => self.vanish_at(i, at),
        }
    }

    fn end_validation(&mut self, i: usize, at: SimMs) {
        let validation = std::mem::replace(&mut self.batches[i].validation, Validation::Used);
        let Validation::Done(result) = validation else {
            return;
        };
        match result {
            Err(violation) => self.fail(i, at, violation_entry(violation)),
            Ok(admission) => self.admit(i, at, admission),
        }
    }

    fn fail(&mut self, i: usize, at: SimMs, error: BatchErrorEntry) {
        let batch = &mut self.batches[i];
        batch.errors = vec![error];
        batch.failed_at = Some(at);
        batch.record(BatchStatus::Failed, at);
    }

    /// Starts a valid batch, unless its tokens would take its model over OpenAI's enqueued
    /// limit (Anthropic has none).
    fn admit(&mut self, i: usize, at: SimMs, admission: Admission) {
        let tokens = admission.bytes.div_ceil(4);
        let model = admission.model;
        if let Some(limit) = self.faults.faults.token_limit
            && self.batches[i].api == Api::OpenAi
        {
            let enqueued: u64 = self
                .batches
                .iter()
                .filter(|b| {
                    !b.vanished
                        && b.model.as_deref() == Some(model.as_str())
                        && matches!(b.status, BatchStatus::InProgress | BatchStatus::Finalizing)
                })
                .map(|b| b.tokens)
                .sum();
            if enqueued + tokens > limit {
                let message = format!(
                    "Enqueued token limit reached for {model} in organization org-simulated. \
                     Limit: {} enqueued tokens. Please try submitting your batch again once \
                     your in-progress batches have completed.",
                    grouped(limit)
                );
                self.batches[i].model = Some(model);
                self.fail(
                    i,
                    at,
                    BatchErrorEntry {
                        code: "token_limit_exceeded".into(),
                        message,
                        param: None,
                        line: None,
                    },
                );
                return;
            }
        }
        let per_request = self.timing.per_request;
        let run_ms =
            self.timing.in_progress + (per_request * admission.requests as f64).round() as i64;
        let batch = &mut self.batches[i];
        batch.model = Some(model);
        batch.total = admission.requests;
        batch.tokens = tokens;
        batch.run_ms = run_ms;
        batch.failed_positions =
            output::failed_positions(batch.seed, batch.total, batch.failure_rate);
        if !admission.refused_lines.is_empty() {
            let refused = output::positions_of(batch.seed, batch.total, &admission.refused_lines);
            batch.failed_positions.extend(refused);
            batch.failed_positions.sort_unstable();
            batch.failed_positions.dedup();
        }
        batch.in_progress_at = Some(at);
        batch.record(BatchStatus::InProgress, at);
    }

    fn vanish_at(&mut self, i: usize, at: SimMs) {
        let batch = &mut self.batches[i];
        batch.vanished = true;
        batch.history.push(Transition::new("vanished", at));
        tracing::info!(batch = %batch.id, "batch vanished");
    }

    /// Makes a batch vanish now; `false` when there is no such (visible) batch.
    pub(crate) fn vanish(&mut self, id: &str) -> bool {
        let now = self.clock.now();
        let Some(i) = self.batch_index.get(id).copied() else {
            return false;
        };
        if self.batches[i].vanished {
            return false;
        }
        self.vanish_at(i, now);
        self.schedule(i);
        true
    }

    /// Registers the files of a batch that just ended and starts writing them: OpenAI's output
    /// and error files, or the one results file of an Anthropic batch, which has a line for
    /// every request (hidden from the Files API, see `RESULTS_PURPOSE`).
    fn write_outputs(&mut self, i: usize, at: SimMs, ending: Ending) {
        let batch = &self.batches[i];
        let processed = batch.processed_final.unwrap_or(0);
        let failed = batch.failed_among(processed);
        let expired = ending == Ending::Expired;
        let (need_output, need_error, purpose) = match batch.api {
            Api::OpenAi => (
                processed > failed,
                failed > 0 || (expired && batch.total > processed),
                "batch_output",
            ),
            Api::Anthropic => (batch.total > 0, false, RESULTS_PURPOSE),
        };
        let Some(model) = batch.model.clone() else {
            return;
        };
        if !need_output && !need_error {
            return;
        }
        let batch_id = batch.id.clone();
        let lifetime = batch.output_expires_after;
        let sink = |state: &mut State, kind: &str| {
            let filename = format!("{batch_id}_{kind}.jsonl");
            let file = Arc::new(StoredFile::new(state.new_path(&filename)));
            let (ready_tx, ready) = watch::channel(FileReady::Pending);
            let id = state.new_file_id();
            let seq = state.next_seq();
            state.add_file(FileEntry {
                seq,
                id: id.clone(),
                filename,
                purpose: purpose.into(),
                created_at: at,
                expires_at: lifetime.map(|s| at + s * 1000),
                data: file.clone(),
                ready,
            });
            (
                id,
                Sink {
                    file,
                    ready: ready_tx,
                },
            )
        };
        let output = need_output.then(|| {
            sink(
                self,
                match self.batches[i].api {
                    Api::OpenAi => "output",
                    Api::Anthropic => "results",
                },
            )
        });
        let error = need_error.then(|| sink(self, "error"));
        let batch = &mut self.batches[i];
        batch.output_file_id = output.as_ref().map(|(id, _)| id.clone());
        batch.error_file_id = error.as_ref().map(|(id, _)| id.clone());
        OutputJob {
            api: batch.api,
            ending,
            input: batch.input.clone(),
            endpoint: batch.endpoint.clone(),
            model,
            seed: batch.seed,
            total: batch.total,
            processed,
            failed_positions: batch.failed_positions.clone(),
            created: secs(at),
            output: output.map(|(_, s)| s),
            error: error.map(|(_, s)| s),
        }
        .spawn();
    }

    /// Records a new batch in `validating`; the caller starts its file validation.
    pub(crate) fn create_batch(
        &mut self,
        request: NewBatch,
    ) -> Result<(usize, Arc<StoredFile>), ApiError> {
        let file = self.file(&request.input_file_id).ok_or_else(|| {
            ApiError::invalid(format!(
                "Invalid 'input_file_id': '{}'. File not found.",
                request.input_file_id
            ))
            .param("input_file_id")
            .code("invalid_value")
        })?;
        if file.purpose != "batch" {
            return Err(ApiError::invalid(format!(
                "The file '{}' has purpose '{}'; a batch input file must be uploaded with purpose 'batch'.",
                file.id, file.purpose
            ))
            .param("input_file_id")
            .code("invalid_value"));
        }
        let input = file.data.clone();
        let index = self.insert_batch(request, input.clone(), false);
        Ok((index, input))
    }

    /// Adds a batch in `validating` on `input` (a client's, or the other tool's when
    /// `foreign`); the caller starts its file validation.
    pub(crate) fn insert_batch(
        &mut self,
        request: NewBatch,
        input: Arc<StoredFile>,
        foreign: bool,
    ) -> usize {
        let now = self.clock.now();
        let id = match request.api {
            Api::OpenAi => self.new_id("batch_", 32, HEX),
            Api::Anthropic => self.new_id("msgbatch_01", 22, BASE62),
        };
        let seed = self.rng.u64(..);
        // Drawn from the batch's own seed, so they do not depend on what else happened.
        let faults = &self.faults.faults;
        let stuck = output::chance(seed, SALT_STUCK) < faults.stuck_finalizing;
        let vanish_at = (output::chance(seed, SALT_VANISH) < faults.vanish)
            .then(|| now + ms(faults.vanish_after_secs));
        let admission = request.admission;
        let total = admission.as_ref().map_or(0, |a| a.requests);
        let mut batch = Batch {
            id,
            api: request.api,
            endpoint: request.endpoint,
            input_file_id: request.input_file_id,
            input,
            completion_window: request.completion_window,
            metadata: request.metadata,
            output_expires_after: request.output_expires_after,
            seed,
            failure_rate: faults.request_failure_rate,
            stuck,
            vanish_at,
            vanished: false,
            status: BatchStatus::Validating,
            created_at: now,
            expires_at: now + self.timing.window,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            validation: admission.map_or(Validation::Pending, |a| Validation::Done(Ok(a))),
            model: None,
            total,
            tokens: 0,
            run_ms: 0,
            failed_positions: Vec::new(),
            processed_final: None,
            errors: Vec::new(),
            output_file_id: None,
            error_file_id: None,
            history: Vec::new(),
            foreign,
            served: Served::new(now),
        };
        batch.record(BatchStatus::Validating, now);
        self.add_batch(batch)
    }

    /// Stores the result of a batch's file validation.
    pub(crate) fn set_validation(&mut self, id: &str, result: Result<Admission, Violation>) {
        if let Some(&i) = self.batch_index.get(id)
            && matches!(self.batches[i].validation, Validation::Pending)
        {
            self.batches[i].validation = Validation::Done(result);
        }
    }

    /// Starts cancelling a batch of `api`; cancelling one that is already cancelling changes
    /// nothing.
    pub(crate) fn cancel(&mut self, api: Api, id: &str) -> Result<usize, ApiError> {
        let now = self.clock.now();
        let i = self
            .visible_batch(api, id)
            .ok_or_else(|| no_such_batch(api, id))?;
        let batch = &mut self.batches[i];
        match batch.status {
            BatchStatus::Validating | BatchStatus::InProgress | BatchStatus::Finalizing => {
                batch.processed_final = Some(batch.processed(now));
                batch.cancelling_at = Some(now);
                batch.record(BatchStatus::Cancelling, now);
            }
            BatchStatus::Cancelling => {}
            ref other => {
                let (status, message) = match api {
                    Api::OpenAi => (
                        axum::http::StatusCode::CONFLICT,
                        format!("Cannot cancel a batch with status '{other}'."),
                    ),
                    Api::Anthropic => (
                        axum::http::StatusCode::BAD_REQUEST,
                        format!("Message Batch {id} has ended and can no longer be canceled."),
                    ),
                };
                return Err(ApiError::new(status, "invalid_request_error", message));
            }
        }
        self.schedule(i);
        Ok(i)
    }

    /// Ends batch `i`'s current stage now, ahead of its schedule: processing (`in_progress`
    /// goes to `finalizing`, every request done), finalizing (to `completed`) or cancelling
    /// (to `cancelled`). Returns whether it moved; a batch in any other status, or vanished,
    /// stays as it is.
    pub(crate) fn step(&mut self, i: usize) -> bool {
        let batch = &self.batches[i];
        let event = match batch.status {
            _ if batch.vanished => return false,
            BatchStatus::InProgress => Event::Finalize,
            BatchStatus::Finalizing => Event::Complete,
            BatchStatus::Cancelling => Event::Cancelled,
            _ => return false,
        };
        let now = self.clock.now();
        self.apply(i, event, now);
        self.schedule(i);
        true
    }
}

/// The 404 for an unknown or vanished batch.
pub(crate) fn no_such_batch(api: Api, id: &str) -> ApiError {
    match api {
        Api::OpenAi => {
            ApiError::not_found(format!("No batch found with id '{id}'.")).param("batch_id")
        }
        Api::Anthropic => ApiError::not_found(format!("Message Batch {id} not found.")),
    }
}

fn violation_entry(violation: Violation) -> BatchErrorEntry {
    BatchErrorEntry {
        code: violation.rule.code().to_owned(),
        message: violation.message,
        param: param_of(violation.rule).map(str::to_owned),
        line: violation.line,
    }
}

/// Moves batches along until `stop`: sleeps until the next event, or until woken.
pub(crate) async fn run_ticker(shared: Arc<Shared>, stop: CancellationToken) {
    const IDLE: Duration = Duration::from_secs(1);
    loop {
        let wait = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            match state.advance() {
                Progress::Idle(Some(at)) => state.clock.real_until(at).unwrap_or(IDLE).min(IDLE),
                Progress::Idle(None) | Progress::Blocked => IDLE,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_printed_with_thousands_separators() {
        assert_eq!(grouped(90_000), "90,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(999), "999");
    }
}
