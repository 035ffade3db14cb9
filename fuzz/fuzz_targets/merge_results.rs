//! Merging a job's downloaded result files (`BATCH.output.jsonl`, one per batch) into
//! `output.jsonl`, on arbitrary contents: a line never changes a byte (the merged file is the
//! parts one after the other, a newline added only where a part lacks its last one); merging
//! again changes nothing; and the check of whether a result file is on disk, which reads
//! `manifest.json`, never panics on any manifest and agrees with what the manifest names.
//!
//! Input: the manifest, then the parts, separated by the bytes FF FE.

#![no_main]

use batchwatch::daemon::finish::collect;
use batchwatch::fuzzing::merge_results;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SEPARATOR: &[u8] = b"\xff\xfe";

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(2).position(|w| w == SEPARATOR) {
        pieces.push(&rest[..at]);
        rest = &rest[at + 2..];
    }
    pieces.push(rest);
    pieces
}

fuzz_target!(|data: &[u8]| {
    let pieces = split(data);
    let (manifest, parts) = pieces.split_first().unwrap();
    if parts.is_empty() || parts.len() > 8 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<String> = (0..parts.len()).map(|i| format!("batch_{i}")).collect();
    for (batch, part) in batches.iter().zip(parts) {
        std::fs::write(dir.path().join(collect::part_name(batch, "output")), part).unwrap();
    }
    std::fs::write(dir.path().join("manifest.json"), manifest).unwrap();
    assert!(collect::on_disk(
        dir.path(),
        &batches[0],
        "output",
        "file-0"
    ));

    let expected: Vec<u8> = match parts {
        [one] => one.to_vec(),
        many => many
            .iter()
            .flat_map(|p| {
                let newline = !p.is_empty() && !p.ends_with(b"\n");
                p.iter().copied().chain(newline.then_some(b'\n'))
            })
            .collect(),
    };
    let merged = merge_results(dir.path(), &batches, "output").unwrap();
    assert_eq!(merged.as_deref(), Some("output.jsonl"));
    let output = std::fs::read(dir.path().join("output.jsonl")).unwrap();
    assert!(
        output == expected,
        "the merged file is not its parts, byte for byte"
    );
    for batch in &batches {
        assert!(
            !dir.path()
                .join(collect::part_name(batch, "output"))
                .exists()
        );
    }
    assert_eq!(merge_results(dir.path(), &batches, "errors").unwrap(), None);
    assert_eq!(
        merge_results(dir.path(), &batches, "output")
            .unwrap()
            .as_deref(),
        Some("output.jsonl")
    );
    assert!(std::fs::read(dir.path().join("output.jsonl")).unwrap() == output);

    // Once merged, a file is on disk exactly when the manifest names it.
    let named = serde_json::from_slice::<Value>(manifest).is_ok_and(|m| {
        m["batches"].as_array().is_some_and(|b| {
            b.iter()
                .any(|b| b.get("output_file_id").and_then(Value::as_str) == Some("file-0"))
        })
    });
    assert_eq!(
        collect::on_disk(dir.path(), &batches[0], "output", "file-0"),
        named
    );
});
