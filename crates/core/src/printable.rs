//! Text from outside (file names, a server's messages, reasons built from them) made safe to
//! print: in a text log line, a table or a message on the terminal, every control character
//! (C0, DEL, C1) is shown as an escape (`\n`, `\r`, `\t`, `\u{1b}`), so it can neither start
//! a forged line nor drive the terminal. Everything else, non-ASCII letters included, is
//! printed as it is. JSON output needs none of this: its strings are escaped already.

use std::borrow::Cow;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// `text` with every control character escaped; borrowed when there is none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` kept on its lines, with every other control character escaped: for a message that
/// is several lines by design (a parser's excerpt of the line at fault, with its caret), whose
/// lines may hold anything the file held. A trailing line break is dropped.
pub fn escape_lines(text: &str) -> String {
    text.trim_end_matches('\n')
        .split('\n')
        .map(escape)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Formats a log event's fields as tracing-subscriber's text format does (the message, then
/// `name=value` pairs), with every control character in them escaped: a value such as a file
/// name can then never split the line or colour the terminal.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Escaping {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Escaping<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Escaping<'_> {
    fn write(&mut self, field: &Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        let pad = if self.first { "" } else { " " };
        self.first = false;
        let text = escape(text);
        self.result = match field.name() {
            "message" => write!(self.writer, "{pad}{text}"),
            name => write!(
                self.writer,
                "{pad}{}={text}",
                name.strip_prefix("r#").unwrap_or(name)
            ),
        };
    }
}

impl Visit for Escaping<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // As the default format: a message as it is, other strings quoted.
        if field.name() == "message" {
            self.write(field, value);
        } else {
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, &crate::telemetry::chain(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_lines_keeps_line_breaks_and_escapes_the_rest() {
        assert_eq!(
            escape_lines("at line 2\n  |\n2 | a = \"\x1b[31m\r\n  |   ^\n"),
            "at line 2\n  |\n2 | a = \"\\u{1b}[31m\\r\n  |   ^"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("plain café.jsonl"), Cow::Borrowed(_)));
        assert_eq!(
            escape("inj\n2026 INFO\x1b[31mred\r\t\x7f\u{9b}\0.jsonl"),
            "inj\\n2026 INFO\\u{1b}[31mred\\r\\t\\u{7f}\\u{9b}\\u{0}.jsonl"
        );
    }

    #[test]
    fn log_fields_and_messages_are_escaped_on_one_line() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let name = "a\nFAKE LINE\x1b[31m";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(file = %name, quoted = name, count = 3, "claimed {name}");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\x1b'), "{out}");
        assert!(
            out.trim_end().ends_with(
                r#"claimed a\nFAKE LINE\u{1b}[31m file=a\nFAKE LINE\u{1b}[31m quoted="a\nFAKE LINE\u{1b}[31m" count=3"#
            ),
            "{out}"
        );
    }
}
