//! The other tool: batches that another client of the same account creates, interleaved in
//! time with everyone else's (`--foreign-batches N`).
//!
//! A real account is shared: a batch list holds the batches of every tool and person in the
//! organisation, and a client that lists batches must pick out its own. After each batch a
//! client creates, the other tool creates [`Foreign::per_create`](crate::model::Foreign::per_create) batches of its own at the
//! same instant, until it has made [`Foreign::wanted`](crate::model::Foreign::wanted); so a list, newest first, mixes them
//! with the client's all the way down. They run the same lifecycle (and faults) as every other
//! batch, on one input file of the other tool's (10 chat requests for `gpt-4o-mini`, uploaded
//! by the simulator the first time it is needed, so it also shows in the file list), and carry
//! no batchwatch metadata. Their metadata takes turns: none; `{"tool": "etl-nightly", "run":
//! "run-K"}`; and `{"job_id": "job_other_K", "owner": "data-team"}`, a job id under a key that
//! is not `batchwatch_job_id`.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::lifecycle::NewBatch;
use crate::model::{Api, FileEntry, FileReady, StoredFile};
use crate::state::State;

/// The endpoint of the other tool's batches.
const ENDPOINT: &str = "/v1/chat/completions";

/// The content of the other tool's input file.
fn input_lines() -> String {
    (0..10)
        .map(|i| {
            json!({
                "custom_id": format!("etl-{i}"),
                "method": "POST",
                "url": ENDPOINT,
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("row {i}")}]},
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// The metadata of the other tool's `k`-th batch.
fn metadata(k: u64) -> Option<Map<String, Value>> {
    let value = match k % 3 {
        0 => return None,
        1 => json!({"tool": "etl-nightly", "run": format!("run-{k}")}),
        _ => json!({"job_id": format!("job_other_{k}"), "owner": "data-team"}),
    };
    value.as_object().cloned()
}

impl State {
    /// The other tool's share after a client's create: its new batches, each as (id, input,
    /// endpoint) for the caller to start their validation.
    pub(crate) fn create_foreign(&mut self) -> Vec<(String, Arc<StoredFile>, String)> {
        let due = self
            .foreign
            .per_create
            .min(self.foreign.wanted.saturating_sub(self.foreign.created));
        if due == 0 {
            return Vec::new();
        }
        let Some((file_id, input)) = self.foreign_input() else {
            return Vec::new();
        };
        (0..due)
            .map(|_| {
                let k = self.foreign.created;
                self.foreign.created += 1;
                let request = NewBatch {
                    api: Api::OpenAi,
                    admission: None,
                    input_file_id: file_id.clone(),
                    endpoint: ENDPOINT.to_owned(),
                    completion_window: "24h".to_owned(),
                    metadata: metadata(k),
                    output_expires_after: None,
                };
                let i = self.insert_batch(request, input.clone(), true);
                (
                    self.batches[i].id.clone(),
                    input.clone(),
                    ENDPOINT.to_owned(),
                )
            })
            .collect()
    }

    /// The other tool's input file, uploaded the first time it is needed; `None` (and no
    /// foreign batch) when it cannot be written.
    fn foreign_input(&mut self) -> Option<(String, Arc<StoredFile>)> {
        if let Some(input) = &self.foreign.input {
            return Some(input.clone());
        }
        let content = input_lines();
        let path = self.new_path("etl-nightly.jsonl");
        if let Err(e) = std::fs::write(&path, &content) {
            tracing::error!(path = %path.display(), error = %e, "writing the other tool's input file failed");
            return None;
        }
        let data = Arc::new(StoredFile::new(path));
        let id = self.new_file_id();
        let seq = self.next_seq();
        let now = self.clock.now();
        self.add_file(FileEntry {
            seq,
            id: id.clone(),
            filename: "etl-nightly.jsonl".to_owned(),
            purpose: "batch".to_owned(),
            created_at: now,
            expires_at: None,
            data: data.clone(),
            ready: watch::channel(FileReady::Ready {
                bytes: content.len() as u64,
            })
            .1,
        });
        self.foreign.input = Some((id, data));
        self.foreign.input.clone()
    }

    /// Takes up the other tool's count and input file from loaded batches.
    pub(crate) fn resume_foreign(&mut self) {
        let mut theirs = self.batches.iter().filter(|b| b.foreign);
        self.foreign.input = theirs
            .next()
            .map(|b| (b.input_file_id.clone(), b.input.clone()));
        self.foreign.created = self.batches.iter().filter(|b| b.foreign).count() as u64;
    }
}
