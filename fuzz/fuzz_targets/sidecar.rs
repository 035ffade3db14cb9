//! Sidecar parsing on arbitrary text: it never panics; every refusal names its key (or, for
//! text that is not TOML, the line and column); and what it accepts keeps the sidecar rules (a
//! deadline after the claim, an endpoint that is a path, metadata within the service's limits,
//! an output expiry from 1 hour to 30 days, a parent that is a job id).

#![no_main]

use std::sync::LazyLock;

use batchwatch::clock::Timestamp;
use batchwatch::config::{self, BatchSettings, Settings};
use batchwatch::model::JobId;
use batchwatch::queue::sidecar;
use libfuzzer_sys::fuzz_target;

static BATCH: LazyLock<BatchSettings> = LazyLock::new(|| {
    Settings::load_from(None, [])
        .expect("the defaults load")
        .batch
});

fuzz_target!(|data: &[u8]| {
    // `sidecar::read` refuses anything that is not UTF-8 before it is parsed.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let claimed_at: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
    match sidecar::parse(text, &BATCH, claimed_at) {
        Ok(options) => {
            assert!(options.deadline_at > claimed_at, "{text:?}");
            if let Some(endpoint) = &options.endpoint {
                assert!(endpoint.starts_with('/'), "{text:?}");
            }
            assert!(!options.completion_window.trim().is_empty());
            assert!(
                config::metadata_problems("metadata", &options.metadata).is_empty(),
                "{text:?}"
            );
            if let Some(secs) = options.output_expires_after {
                assert!((3600..=30 * 86_400).contains(&secs), "{secs} from {text:?}");
            }
            if let Some(parent) = &options.parent_job {
                assert!(JobId::parse(parent).is_some());
            }
        }
        Err(problems) => {
            assert!(
                !problems.is_empty(),
                "a refusal without a problem: {text:?}"
            );
            for p in &problems {
                match &p.key {
                    Some(key) => assert!(!key.is_empty(), "an empty key: {p:?} from {text:?}"),
                    // toml gives every syntax error a place but one: nesting past its limit.
                    None => assert!(
                        p.message.starts_with("not valid TOML")
                            && (p.message.contains(" line ")
                                || p.message.contains("nested too deeply")),
                        "a refusal that names neither a key nor a line: {p:?} from {text:?}"
                    ),
                }
            }
            assert!(!sidecar::describe(&problems).is_empty());
        }
    }
});
