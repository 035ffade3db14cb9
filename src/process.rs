//! What every command of the process shares: the async runtime it runs on, and its standard
//! output.

use std::io::Write;

use anyhow::Context;

/// Builds the multi-threaded runtime the async commands run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Writes `text` to standard output. A reader that went away (`batchwatch status | head -1`)
/// is not an error: the rest is dropped quietly. Any other write error is one.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to standard output"))
        }
        _ => Ok(()),
    }
}
