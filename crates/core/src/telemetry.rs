//! Logging: `RUST_LOG` filters (default `info`); human lines, coloured only on a terminal, or
//! one JSON object per line. Everything goes to stderr, which journald captures. In text lines,
//! control characters in messages and fields (a file name holding a newline or an escape
//! sequence) are escaped ([`crate::printable`]), so one event is always one line.
//!
//! Logging is up before the configuration is read, in text; [`Logging::set_format`] then
//! applies `log.format` from it. A fatal error is printed once: one plain line, or one JSON
//! line when the logs are JSON ([`Logging::json`]).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogFormat;

/// Whether [`Logging::set_format`] chose JSON lines.
static JSON: AtomicBool = AtomicBool::new(false);

/// The subscriber under the format layer: the registry with the filter.
type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// The layer that writes lines, text or JSON.
type Lines = Box<dyn Layer<Filtered> + Send + Sync>;

/// The process's logging once [`Logging::start`] has installed it: handles to change its filter
/// and its format later.
#[derive(Clone)]
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<Lines, Filtered>,
}

impl Logging {
    /// Installs the global subscriber: text lines to stderr, filtered by `RUST_LOG` (default
    /// `info`). A second call (a process that has a subscriber already) changes nothing.
    pub fn start() -> Logging {
        let (filter, filter_handle) = reload::Layer::new(filter_or("info"));
        let (format, format_handle) = reload::Layer::new(lines(LogFormat::Text));
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(format)
            .try_init();
        Logging {
            filter: filter_handle,
            format: format_handle,
        }
    }

    /// Writes lines in `format` from now on.
    pub fn set_format(&self, format: LogFormat) {
        if self.format.reload(lines(format)).is_ok() {
            JSON.store(format == LogFormat::Json, Ordering::Relaxed);
        }
    }

    /// Whether the process logs JSON lines: then a fatal error is one of them, for the reader
    /// of the log; else it is one plain line on stderr, which the journal keeps as well (a
    /// second, logged copy would only repeat it).
    pub fn json() -> bool {
        JSON.load(Ordering::Relaxed)
    }

    /// Filters with `level` (`log.level`) from now on, unless `RUST_LOG` is set: it wins, at
    /// start and after. Returns whether the filter changed; an unreadable `level` is an error.
    pub fn set_level(&self, level: &str) -> Result<bool, String> {
        if std::env::var_os("RUST_LOG").is_some() {
            return Ok(false);
        }
        let filter = level_filter(level).map_err(|e| e.to_string())?;
        self.filter.reload(filter).map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Filters with `default` from now on, unless `RUST_LOG` says otherwise.
    pub fn set_default_filter(&self, default: &str) {
        let _ = self.filter.reload(filter_or(default));
    }
}

/// The filter `RUST_LOG` gives, or `default` when it is unset or not a filter.
fn filter_or(default: &str) -> EnvFilter {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| level_filter(&text).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// The filter `text` (`RUST_LOG`'s syntax) describes. Both found by fuzzing the configuration:
/// - each directive is trimmed first: tracing-subscriber parses a directive trimmed but slices
///   it untrimmed, and panics when whitespace before it moves a slice into a multi-byte
///   character (`level = " Ҙ[a]"`);
/// - a field's value (`[span{field=value}]`) matches as written, not as a regular expression:
///   compiling one can take minutes (`[{$e=p<<<<...}]` took over two), at every start.
pub fn level_filter(text: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let trimmed: Vec<&str> = text.split(',').map(str::trim).collect();
    EnvFilter::builder()
        .with_regex(false)
        .parse(trimmed.join(","))
}

fn lines(format: LogFormat) -> Lines {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer
            .fmt_fields(crate::printable::EscapedFields)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    }
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
