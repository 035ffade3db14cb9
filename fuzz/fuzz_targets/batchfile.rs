//! The batch-file validator on arbitrary bytes: it never panics; it never accepts a line that
//! serde_json refuses, nor a file whose lines break the rules it reports as kept (one endpoint,
//! one model, unique ids, parts that cover the file within the limits); and its verdict is the
//! same however the reads cut the file.
//!
//! Input: one control byte (split or not, endpoint given or not, which limits), two bytes that
//! seed the read sizes, then the file.

#![no_main]

use std::collections::HashSet;
use std::io::{self, Read};

use batchwatch_core::batchfile::{self, Expect, Limits, Summary, Violation};
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
    for line in lines {
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
        assert_eq!(value["method"], "POST");
        assert_eq!(value["url"].as_str(), Some(summary.endpoint.as_str()));
        assert_eq!(
            value["body"]["model"].as_str(),
            Some(summary.model.as_str())
        );
    }
    if let Some(endpoint) = expect.endpoint {
        assert_eq!(summary.endpoint, endpoint);
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

fuzz_target!(|data: &[u8]| {
    let [control, seed_hi, seed_lo, file @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_requests: [1, 2, 3, 50_000][usize::from(control >> 2 & 3)],
        max_bytes: [64, 256, 4096, 200_000_000][usize::from(control >> 4 & 3)],
    };
    let expect = Expect {
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
