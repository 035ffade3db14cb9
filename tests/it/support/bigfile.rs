//! Large batch input files for memory tests, written without holding them in memory. Shared
//! with `benches/upload_rss.rs`, which includes this file by path.

use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes valid chat-completion request lines to `path` until it holds at least `target`
/// bytes; returns the size written.
pub fn write_jsonl(path: &Path, target: u64) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let filler = "lorem ipsum dolor sit amet ".repeat(30);
    let mut written = 0u64;
    let mut n = 0u64;
    while written < target {
        let line = format!(
            "{{\"custom_id\":\"req-{n}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"{n} {filler}\"}}]}}}}\n"
        );
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        n += 1;
    }
    out.flush()?;
    Ok(written)
}
