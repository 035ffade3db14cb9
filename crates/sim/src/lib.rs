//! The built-in simulator of the OpenAI Batch and Files API and of Anthropic's Message Batches
//! (`batchwatch sim`).
//!
//! It serves the endpoints of the reference OpenAPI description, and Anthropic's, faithfully
//! enough that the official SDKs (`openai`, `anthropic`) work against it unchanged, runs batches through their lifecycle in simulated
//! time, writes output and error files in the real line format, and injects faults on demand.
//! Users run it to try batchwatch and to test their pipelines without spending money; the
//! tests and `batchwatch demo` start it in-process with [`start`].
//!
//! # API
//!
//! Served under `/v1` (base URL `http://ADDR/v1`) and under `/openai/v1` (Azure-style):
//! `POST /files` (multipart, streamed to disk), `GET /files`, `GET /files/{id}`,
//! `GET /files/{id}/content` (streamed, with Content-Length), `DELETE /files/{id}`,
//! `POST /batches`, `GET /batches`, `GET /batches/{id}`, `POST /batches/{id}/cancel`.
//! A key is required as `Authorization: Bearer KEY` or `api-key: KEY`: with
//! [`SimConfig::api_key`] only that key (and those added since, `POST /admin/keys`), otherwise
//! any non-empty one. Errors have the real shape `{"error": {"message", "type", "param",
//! "code"}}`.
//!
//! Anthropic's Message Batches are served beside them under `/v1` (base URL `http://ADDR`, as
//! the `anthropic` SDK takes it): `POST /messages/batches` (the requests in the body, checked
//! at once), `GET /messages/batches` (`limit` up to 1000, `before_id`, `after_id`),
//! `GET /messages/batches/{id}`, `POST /messages/batches/{id}/cancel`,
//! `GET /messages/batches/{id}/results` (JSONL, a line for every request: `succeeded`,
//! `errored`, `canceled` or `expired`) and `DELETE /messages/batches/{id}` (an ended batch).
//! They need `x-api-key` (or either header above) and an `anthropic-version`, answer errors in
//! Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`, 529
//! `overloaded_error` included), and run through the same lifecycle, faults and admin API as
//! OpenAI's batches; each API lists only its own. The mapping is in `messages.rs`.
//!
//! Batches go validating → in_progress → finalizing → completed, with durations set in
//! simulated seconds and [`SimConfig::time_scale`] simulated seconds per real second. A create
//! validates its input file with [`batchwatch_core::batchfile::validate`], the daemon's own rules; a
//! broken rule fails the batch with `errors.data[0]` naming the `code`, `line` and `param`.
//! A batch still running at `created_at` + the completion window expires with partial output;
//! a cancelled one is `cancelling` for a while, then `cancelled` with partial output.
//!
//! # Admin API
//!
//! JSON, never subject to faults or keys:
//! - `GET /admin/stats`: [`Stats`]: batches created per `batchwatch_job_id` metadata value,
//!   requests per `METHOD /route/{template}`, faults injected per kind, and every batch's
//!   status history with simulated and real timestamps.
//! - `GET /admin/faults`, `PUT /admin/faults` (replace), `PATCH /admin/faults` (set the
//!   fields given): the standing [`Faults`].
//! - `GET /admin/faults/script`, `POST /admin/faults/script` (append one [`ScriptedFault`] or
//!   a list, e.g. `{"kind": "rate_limit", "retry_after": {"millis": 1500}, "times": 2,
//!   "method": "POST", "path": "/v1/batches"}`, or `{"kind": "status", "status": 503}` for
//!   any error status), `DELETE /admin/faults/script` (clear).
//! - `GET /admin/counts`: [`Counts`]: requests per route and batches per status, cheap enough
//!   to ask every second of a fleet benchmark (unlike the stats, which hold every history).
//! - `POST /admin/batches/step` `{"ids": [...]}` or `{"count": K}`: ends the current stage of
//!   those batches (or of K picked at random among the clients' batches in progress) now:
//!   `in_progress` goes to `finalizing` with every request done, `finalizing` to `completed`,
//!   `cancelling` to `cancelled`. With long durations (`--in-progress-secs 10000000`) a fleet
//!   stays in progress while a benchmark moves the few it wants, at instants it knows
//!   ([`Stepped::at_ms`]; every [`Transition`] also has its simulated millisecond).
//! - `GET /admin/observations`, `POST /admin/observations/reset`: [`Observations`]: how often
//!   each batch was sent to a client (retrieve, list page, create or cancel answer) and the
//!   longest it went unseen, to check that a client sees every batch often enough.
//! - `POST /admin/batches/{id}/vanish`: the batch answers 404 from now on.
//! - `GET /admin/clock`, `POST /admin/clock` `{"advance_secs": 86400, "time_scale": 0}`:
//!   read the simulated clock, jump it ahead, or change its speed (0 stops it).
//! - `POST /admin/reset`: forget every file, batch and count; faults return to the
//!   configured ones.
//! - `GET /admin/files`: [`HeldFile`]s: every file the simulator holds, whoever made it.
//! - `PUT /admin/key` `{"key": "sk-..."}`: accept only that key from now on (a rotated key);
//!   `{"key": null}`: any non-empty key.
//! - `POST /admin/keys` `{"key": "sk-..."}`: accept that key as well, as another key of the
//!   same organisation: every key accepted sees and changes the same files and batches (a
//!   colleague's script, another tool). Nothing changes while any key is accepted.
//!
//! # Fleets
//!
//! Built to serve tens of thousands of batches: a lock with nothing due costs the same with
//! 20,000 batches as with one (events wait in a heap, `lifecycle.rs`), retrieve finds its batch
//! by id, and a list page reads only its own batches wherever it is in the list
//! (`listing.rs`). Two settings make the list less convenient than the real one, to test
//! clients that list: [`SimConfig::list_order`] (`--list-order shuffled`: no time order, but
//! every walk still complete and consistent) and [`SimConfig::foreign_batches`]
//! (`--foreign-batches N`: another tool's batches interleaved with the clients', without
//! batchwatch metadata, `foreign.rs`).
//!
//! # Restarts
//!
//! State lives in memory and file contents in the data directory. A simulator given a data
//! directory of its own (`--data-dir`) saves its state there as `state.json` when it stops
//! cleanly (SIGTERM, SIGINT, [`SimHandle::shutdown`]) and loads it at the next start: files,
//! batches and their histories, ids and counters carry on. The simulated clock resumes at its
//! saved reading, so the time it was down does not count and no batch jumps ahead into expiry;
//! faults, the time scale and the durations come from the new start's configuration. After a
//! crash, or without a data directory, a restarted simulator starts empty. Details and limits:
//! `persist.rs`.

mod admin;
mod args;
mod batches;
mod conn;
mod error;
mod faults;
mod files;
mod foreign;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod lifecycle;
mod listing;
mod messages;
mod model;
mod output;
mod persist;
mod routes;
mod server;
mod state;

pub use admin::{BatchObservation, Counts, HeldFile, Observations, Step, Stepped};
pub use args::{SimArgs, run};
pub use model::{
    AuthFault, BatchStats, ErrorStatus, FaultKind, Faults, ListOrder, RetryAfter, ScriptedFault,
    SimConfig, Stats, Transition,
};
pub use persist::STATE_FILE;
pub use server::{SimHandle, start};
