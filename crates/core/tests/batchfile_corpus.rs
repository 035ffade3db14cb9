//! The batch-file validator against a second JSON reader: every line of every file of the fuzz
//! corpus (`fuzz/corpus/batchfile`, see `fuzz/fuzz_targets/batchfile.rs` for its layout) that
//! the validator accepts is one Python's `json` module reads too. The fuzz target checks the
//! same against serde_json on every input it tries.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use batchwatch_core::batchfile::{self, Expect, Format, Limits};

/// Reads each line of its input as UTF-8 JSON; prints the first it refuses, and fails.
const READ_EACH_LINE: &str = r#"
import json, sys
for number, line in enumerate(sys.stdin.buffer.read().split(b"\n")[:-1], 1):
    try:
        json.loads(line.decode("utf-8"))
    except ValueError as e:
        sys.exit(f"line {number} of the accepted lines: {e}: {line[:200]!r}")
"#;

/// The lines of every corpus file the validator accepts, one per line, and how many files.
fn accepted_lines(corpus: &Path) -> (Vec<u8>, usize) {
    let mut lines = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(corpus).expect("the committed corpus") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        // The control byte and the two bytes of read sizes come first.
        let [control, _, _, file @ ..] = &data[..] else {
            continue;
        };
        let expect = Expect {
            format: if control & 0x40 != 0 {
                Format::Anthropic
            } else {
                Format::OpenAi
            },
            endpoint: (control & 2 != 0).then_some("/v1/chat/completions"),
            limits: Limits {
                max_requests: [1, 2, 3, 50_000][usize::from(control >> 2 & 3)],
                max_bytes: [64, 256, 4096, 200_000_000][usize::from(control >> 4 & 3)],
            },
            split: control & 1 != 0,
        };
        if batchfile::validate(file, expect).is_err() {
            continue;
        }
        files += 1;
        for line in file
            .strip_suffix(b"\n")
            .unwrap_or(file)
            .split(|&b| b == b'\n')
        {
            lines.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
            lines.push(b'\n');
        }
    }
    (lines, files)
}

#[test]
fn every_line_the_validator_accepts_in_the_fuzz_corpus_is_one_python_reads() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/batchfile");
    let (lines, files) = accepted_lines(&corpus);
    assert!(
        files >= 10,
        "only {files} accepted files in {}",
        corpus.display()
    );
    let python = Command::new("python3")
        .args(["-c", READ_EACH_LINE])
        .stdin(Stdio::piped())
        .spawn();
    let mut python = match python {
        Ok(child) => child,
        // CI requires Python (the SDK tests need it too).
        Err(e) if std::env::var_os("BATCHWATCH_REQUIRE_SDK").is_none() => {
            println!("skipped: python3 cannot be run ({e})");
            return;
        }
        Err(e) => panic!("python3 cannot be run ({e}), and BATCHWATCH_REQUIRE_SDK is set"),
    };
    python.stdin.take().unwrap().write_all(&lines).unwrap();
    let status = python.wait().unwrap();
    assert!(
        status.success(),
        "Python refused a line the validator accepted (above)"
    );
}
