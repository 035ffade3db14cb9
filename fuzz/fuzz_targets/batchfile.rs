//! The batch-file validator on arbitrary bytes, in both formats: it never panics; it never
//! accepts a line that serde_json refuses, nor a file whose lines break the rules it reports as
//! kept (OpenAI: one endpoint, one model; Anthropic: ids of the pattern, only `custom_id` and
//! `params`, a model, a positive `max_tokens` and messages on every line; both: unique ids,
//! parts that cover the file within the limits); and its verdict is the same however the reads
//! cut the file.
//!
//! Input: one control byte (bit 0 split or not, bit 1 endpoint given or not, bits 2-5 which
//! limits, bit 6 Anthropic's format rather than OpenAI's), two bytes that seed the read sizes,
//! then the file.

#![no_main]

use std::collections::HashSet;
use std::io::{self, Read};

use batchwatch_core::batchfile::{self, Expect, Format, Limits, Summary, Violation};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ENDPOINT: &str = "/v1/chat/completions";

/// Hands out the file in reads of pseudo-random sizes (1 to 17 bytes, now and then a whole
/// 4 KiB), with an occasional `Interrupted`, as a pipe or a slow disk may.
struct Chunked<'a> {
    rest: &'a [u8],
    state: u32,
}

impl Chunked<'_> {
    fn next(&mut self) -> u32 {
        // xorshift32; never zero from a non-zero start.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        self.state
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let roll = self.next();
        if roll % 23 == 0 {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let size = if roll % 11 == 0 {
            4096
        } else {
            1 + (roll >> 8) as usize % 17
        };
        let n = size.min(buf.len()).min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

fn check(summary: &Summary, file: &[u8], expect: &Expect<'_>) {
    assert_eq!(summary.bytes, file.len() as u64);
    let lines: Vec<&[u8]> = file
        .strip_suffix(b"\n")
        .unwrap_or(file)
        .split(|&b| b == b'\n')
        .collect();
    assert_eq!(summary.requests, lines.len() as u64);
    let mut ids = HashSet::new();
    for (n, line) in lines.into_iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let value: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "accepted a line serde_json refuses ({e}): {:?}",
                String::from_utf8_lossy(line)
            )
        });
        let id = value["custom_id"].as_str().expect("a string custom_id");
        assert!(
            !id.is_empty() && ids.insert(id.to_owned()),
            "custom_id {id:?} again"
        );
        match expect.format {
            Format::OpenAi => {
                assert_eq!(value["method"], "POST");
                assert_eq!(value["url"].as_str(), Some(summary.endpoint.as_str()));
                assert_eq!(
                    value["body"]["model"].as_str(),
                    Some(summary.model.as_str())
                );
            }
            Format::Anthropic => {
                check_anthropic(&value, id);
                if n == 0 {
                    assert_eq!(
                        value["params"]["model"].as_str(),
                        Some(summary.model.as_str()),
                        "the first line's model"
                    );
                }
            }
        }
    }
    match expect.format {
        Format::OpenAi => {
            if let Some(endpoint) = expect.endpoint {
                assert_eq!(summary.endpoint, endpoint);
            }
        }
        Format::Anthropic => {
            assert_eq!(summary.endpoint, "/v1/messages");
        }
    }
    let mut at = 0;
    for part in &summary.parts {
        assert_eq!(part.start, at, "parts are contiguous");
        assert!(part.end > part.start && part.requests > 0);
        assert!(part.requests <= expect.limits.max_requests);
        assert!(part.end - part.start <= expect.limits.max_bytes);
        let end = part.end as usize;
        assert!(
            end == file.len() || file[end - 1] == b'\n',
            "a part ends at a line's end"
        );
        if expect.format == Format::Anthropic {
            check_create_body(
                &file[part.start as usize..end],
                part.requests,
                expect.limits,
            );
        }
        at = part.end;
    }
    assert_eq!(at, summary.bytes);
    assert_eq!(
        summary.parts.iter().map(|p| p.requests).sum::<u64>(),
        summary.requests
    );
    if !expect.split {
        assert_eq!(summary.parts.len(), 1);
    }
}

/// An accepted Anthropic line: only `custom_id` (of the pattern) and `params`, with a model, a
/// positive integer `max_tokens` and at least one message.
fn check_anthropic(value: &Value, id: &str) {
    let line = value.as_object().expect("an object");
    assert!(
        line.keys().all(|k| k == "custom_id" || k == "params"),
        "{line:?}"
    );
    assert!(
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "custom_id {id:?} is off the pattern"
    );
    let params = &value["params"];
    assert!(params.is_object(), "params {params:?}");
    let model = params["model"].as_str().expect("a string model");
    assert!(!model.is_empty() && model.chars().count() <= batchfile::MAX_MODEL_CHARS);
    assert!(
        params["max_tokens"].as_u64().is_some_and(|n| n >= 1),
        "{params:?}"
    );
    assert!(
        params["messages"].as_array().is_some_and(|m| !m.is_empty()),
        "{params:?}"
    );
}

/// The body of the create request built from a part, `{"requests":[` + its lines joined by `,`
/// + `]}`, is JSON holding its requests, and at most 15 bytes over the part's limit (the frame;
/// `Limits::ANTHROPIC` takes them off the service's).
fn check_create_body(part: &[u8], requests: u64, limits: Limits) {
    let lines: Vec<&[u8]> = part
        .strip_suffix(b"\n")
        .unwrap_or(part)
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .collect();
    let body = [
        br#"{"requests":["#.as_slice(),
        &lines.join(&b","[..]),
        br#"]}"#,
    ]
    .concat();
    assert!(
        body.len() as u64 <= limits.max_bytes + 15,
        "{} bytes",
        body.len()
    );
    let value: Value = serde_json::from_slice(&body).expect("the create body is JSON");
    assert_eq!(
        value["requests"].as_array().map(Vec::len),
        Some(requests as usize)
    );
}

fuzz_target!(|data: &[u8]| {
    let [control, seed_hi, seed_lo, file @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_requests: [1, 2, 3, 50_000][usize::from(control >> 2 & 3)],
        max_bytes: [64, 256, 4096, 200_000_000][usize::from(control >> 4 & 3)],
    };
    let expect = Expect {
        format: if control & 0x40 != 0 {
            Format::Anthropic
        } else {
            Format::OpenAi
        },
        endpoint: (control & 2 != 0).then_some(ENDPOINT),
        limits,
        split: control & 1 != 0,
    };
    let whole: Result<Summary, Violation> = batchfile::validate(file, expect);
    let chunked = batchfile::validate(
        Chunked {
            rest: file,
            state: u32::from_be_bytes([1, 0, *seed_hi, *seed_lo]),
        },
        expect,
    );
    assert_eq!(whole, chunked, "the verdict depends on the read sizes");
    match whole {
        Ok(summary) => check(&summary, file, &expect),
        Err(v) => {
            assert!(!v.message.is_empty());
            assert!(
                v.to_string()
                    .ends_with(&format!("(rule {})", v.rule.code()))
            );
        }
    }
});
