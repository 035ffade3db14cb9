//! Logging: `RUST_LOG` filters (default `info`); human lines, coloured only on a terminal, or
//! one JSON object per line. Everything goes to stderr, which journald captures. In text lines,
//! control characters in messages and fields (a file name holding a newline or an escape
//! sequence) are escaped ([`crate::printable`]), so one event is always one line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Later calls (tests start several daemons) are no-ops.
pub fn init(format: LogFormat) {
    init_with_level(format, "info");
}

/// Changes the level filter of the subscriber [`init_with_level`] installed.
#[derive(Clone)]
pub struct LogLevel {
    set: std::sync::Arc<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLevel")
    }
}

impl LogLevel {
    /// A control that changes nothing (no subscriber of ours, as in tests).
    pub fn none() -> LogLevel {
        LogLevel {
            set: std::sync::Arc::new(|_| Ok(())),
        }
    }

    /// Applies `level` (`log.level`), unless `RUST_LOG` is set: it wins, at start and after.
    /// Returns whether the filter changed.
    pub fn apply(&self, level: &str) -> Result<bool, String> {
        if std::env::var_os("RUST_LOG").is_some() {
            return Ok(false);
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        (self.set)(filter).map(|()| true)
    }
}

/// Installs the global subscriber with `RUST_LOG`'s filter, else `level`, and returns the
/// control that changes the level later (`log.level` on a reload). Later calls are no-ops.
pub fn init_with_level(format: LogFormat, level: &str) -> LogLevel {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_env_filter(filter).with_filter_reloading();
            let handle = builder.reload_handle();
            match builder.try_init() {
                Ok(()) => LogLevel {
                    set: std::sync::Arc::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
                },
                Err(_) => LogLevel::none(),
            }
        }};
    }
    match format {
        LogFormat::Text => install!(
            builder
                .fmt_fields(crate::printable::EscapedFields)
                .with_ansi(std::io::stderr().is_terminal())
        ),
        LogFormat::Json => install!(builder.json().flatten_event(true).with_current_span(true)),
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
