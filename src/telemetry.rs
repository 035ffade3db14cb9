//! Logging: `RUST_LOG` filters (default `info`); human lines, coloured only on a terminal, or
//! one JSON object per line. Everything goes to stderr, which journald captures. In text lines,
//! control characters in messages and fields (a file name holding a newline or an escape
//! sequence) are escaped ([`crate::printable`]), so one event is always one line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Later calls (tests start several daemons) are no-ops.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .fmt_fields(crate::printable::EscapedFields)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Formats an error with its whole cause chain, for a message or a log field. A cause whose
/// text the previous one already shows is left out (some libraries repeat their source).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    join_causes(std::iter::successors(Some(err), |e| e.source()).map(ToString::to_string))
}

/// Joins the texts of an error chain with `: `, leaving out repeats.
pub fn join_causes(causes: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for text in causes {
        if !last.is_empty() && last.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
}
