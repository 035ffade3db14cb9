//! The fast path of a line's check: one pass over a well-formed line that reads the four fields
//! the rules need, at memchr speed through the strings.
//!
//! It answers only for a line that every rule before the fields' own would pass: strict JSON
//! (a subset of what serde_json reads), nested at most [`MAX_NESTING`] deep, its numbers within
//! an f64's range, no lone surrogate, and `custom_id`, `method`, `url` and `body.model` each
//! there once as a string, `body` once as an object, with no escape in the keys around them.
//! For any other line it answers `None` and the reference path ([`super::probe`]) reads it
//! again and names its fault as it always did: the fast path may decline a line, never judge
//! one differently. The property tests below hold the two paths together.

use std::borrow::Cow;

use super::{Body, MAX_NESTING, Probe, number_in_range};

/// The fields of a well-formed line, or `None` for the reference path to read it.
pub(super) fn fields(text: &str) -> Option<Probe<'_>> {
    let mut scan = Scan {
        text: text.as_bytes(),
        at: 0,
        depth: 0,
        objects: 0,
        in_body: false,
        body: false,
        strings: [None; 4],
    };
    scan.line()?;
    let [custom_id, method, url, model] = scan.strings;
    let read = |token: Option<Token>| token?.read(text);
    Some(Probe {
        custom_id: Some(read(custom_id)?),
        method: Some(read(method)?),
        url: Some(read(url)?),
        body: Body::Model(read(model)?),
    })
}

/// What a key names: one of the string fields (the index of its token), `body`, or another.
#[derive(Clone, Copy)]
enum Key {
    String(usize),
    Body,
    Other,
}

const CUSTOM_ID: usize = 0;
const METHOD: usize = 1;
const URL: usize = 2;
const MODEL: usize = 3;

/// What comes next in the line.
#[derive(Clone, Copy)]
enum Want {
    /// A value, the member `Key` of an object (or an item of an array: [`Key::Other`]).
    Value(Key),
    /// A key or the `}` of the object just opened.
    FirstMember,
    /// A value or the `]` of the array just opened.
    FirstItem,
    /// A `,` or the closing bracket of the open array or object.
    Next,
}

/// A string token: `text[start..end]`, its quotes included.
#[derive(Clone, Copy)]
struct Token {
    start: usize,
    end: usize,
    escaped: bool,
}

impl Token {
    /// The string's value, unescaped as serde_json does.
    fn read(self, text: &str) -> Option<Cow<'_, str>> {
        if self.escaped {
            serde_json::from_str(&text[self.start..self.end])
                .ok()
                .map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&text[self.start + 1..self.end - 1]))
        }
    }
}

struct Scan<'a> {
    text: &'a [u8],
    at: usize,
    /// How many arrays and objects are open.
    depth: usize,
    /// Bit `d - 1` is set when the one open `d` deep is an object (`MAX_NESTING` < 128).
    objects: u128,
    /// Whether the object open two deep is the line's `body`.
    in_body: bool,
    /// Whether `body` was seen.
    body: bool,
    /// The tokens of `custom_id`, `method`, `url` and `body.model`.
    strings: [Option<Token>; 4],
}

impl Scan<'_> {
    /// Reads the whole line: one object, whitespace around it.
    fn line(&mut self) -> Option<()> {
        self.skip_whitespace();
        if self.text.get(self.at) != Some(&b'{') {
            return None;
        }
        let mut want = Want::Value(Key::Other);
        loop {
            self.skip_whitespace();
            let byte = *self.text.get(self.at)?;
            want = match want {
                Want::Value(key) => self.value(byte, key)?,
                Want::FirstMember if byte == b'}' => self.close(),
                Want::FirstMember => Want::Value(self.key()?),
                Want::FirstItem if byte == b']' => self.close(),
                Want::FirstItem => Want::Value(Key::Other),
                Want::Next => {
                    let in_object = self.objects >> (self.depth - 1) & 1 == 1;
                    match (byte, in_object) {
                        (b',', true) => {
                            self.at += 1;
                            self.skip_whitespace();
                            Want::Value(self.key()?)
                        }
                        (b',', false) => {
                            self.at += 1;
                            Want::Value(Key::Other)
                        }
                        (b'}', true) | (b']', false) => self.close(),
                        _ => return None,
                    }
                }
            };
            if self.depth == 0 {
                self.skip_whitespace();
                return (self.at == self.text.len()).then_some(());
            }
        }
    }

    /// Reads the value that starts with `byte`.
    fn value(&mut self, byte: u8, key: Key) -> Option<Want> {
        match (byte, key) {
            (b'"', Key::String(field)) => {
                let token = self.string()?;
                self.strings[field]
                    .replace(token)
                    .is_none()
                    .then_some(Want::Next)
            }
            (b'{', Key::Body) if !self.body => {
                self.body = true;
                self.in_body = true;
                self.open(true)
            }
            (_, Key::String(_) | Key::Body) => None,
            (b'"', Key::Other) => self.string().map(|_| Want::Next),
            (b'{', Key::Other) => self.open(true),
            (b'[', Key::Other) => self.open(false),
            (b't', Key::Other) => self.literal(b"true"),
            (b'f', Key::Other) => self.literal(b"false"),
            (b'n', Key::Other) => self.literal(b"null"),
            (b'-' | b'0'..=b'9', Key::Other) => self.number(),
            _ => None,
        }
    }

    /// Reads a key and its colon; says which field it names. An escaped key where a field
    /// may be is left to the reference path, which unescapes it.
    fn key(&mut self) -> Option<Key> {
        if self.text.get(self.at) != Some(&b'"') {
            return None;
        }
        let token = self.string()?;
        let name = &self.text[token.start + 1..token.end - 1];
        let key = match (self.depth, self.in_body) {
            (1, _) => match name {
                b"custom_id" => Key::String(CUSTOM_ID),
                b"method" => Key::String(METHOD),
                b"url" => Key::String(URL),
                b"body" => Key::Body,
                _ => Key::Other,
            },
            (2, true) if name == b"model" => Key::String(MODEL),
            (2, true) => Key::Other,
            _ => return self.colon(Key::Other),
        };
        if token.escaped {
            return None;
        }
        self.colon(key)
    }

    fn colon(&mut self, key: Key) -> Option<Key> {
        self.skip_whitespace();
        if self.text.get(self.at) != Some(&b':') {
            return None;
        }
        self.at += 1;
        Some(key)
    }

    /// Opens the array or object whose bracket is at `at`.
    fn open(&mut self, object: bool) -> Option<Want> {
        self.at += 1;
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return None;
        }
        let bit = 1u128 << (self.depth - 1);
        if object {
            self.objects |= bit;
            Some(Want::FirstMember)
        } else {
            self.objects &= !bit;
            Some(Want::FirstItem)
        }
    }

    /// Closes the open array or object, whose bracket is at `at`.
    fn close(&mut self) -> Want {
        self.at += 1;
        self.depth -= 1;
        if self.depth == 1 {
            self.in_body = false;
        }
        Want::Next
    }

    fn literal(&mut self, word: &[u8]) -> Option<Want> {
        self.text[self.at..].starts_with(word).then(|| {
            self.at += word.len();
            Want::Next
        })
    }

    /// Reads a number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, within an f64's range.
    fn number(&mut self) -> Option<Want> {
        let start = self.at;
        self.eat(b"-");
        match self.text.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits()?,
            _ => return None,
        }
        if self.eat(b".") {
            self.digits()?;
        }
        if self.eat(b"eE") {
            self.eat(b"+-");
            self.digits()?;
        }
        number_in_range(&self.text[start..self.at]).then_some(Want::Next)
    }

    /// Skips one byte if it is one of `any`.
    fn eat(&mut self, any: &[u8]) -> bool {
        let hit = self.text.get(self.at).is_some_and(|b| any.contains(b));
        self.at += usize::from(hit);
        hit
    }

    /// Skips one or more digits.
    fn digits(&mut self) -> Option<()> {
        let run = self.text[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.at += run;
        (run > 0).then_some(())
    }

    /// Reads a string whose opening quote is at `at`: no control character, every escape
    /// valid, every `\u` surrogate one of a pair.
    fn string(&mut self) -> Option<Token> {
        let start = self.at;
        let text = self.text;
        let mut at = start + 1;
        let mut escaped = false;
        loop {
            let run = memchr::memchr2(b'"', b'\\', &text[at..])?;
            // The same test for each byte, so that it runs on whole vectors.
            let control = text[at..at + run]
                .iter()
                .fold(false, |found, &b| found | (b < 0x20));
            if control {
                return None;
            }
            at += run;
            if text[at] == b'"' {
                self.at = at + 1;
                return Some(Token {
                    start,
                    end: at + 1,
                    escaped,
                });
            }
            escaped = true;
            match text.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                b'u' => {
                    let unit = hex4(text.get(at + 2..at + 6)?)?;
                    at += 6;
                    if (0xDC00..=0xDFFF).contains(&unit) {
                        return None;
                    }
                    if (0xD800..=0xDBFF).contains(&unit) {
                        if text.get(at..at + 2)? != b"\\u" {
                            return None;
                        }
                        let low = hex4(text.get(at + 2..at + 6)?)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        at += 6;
                    }
                }
                _ => return None,
            }
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.text.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }
}

/// The value of four hex digits.
fn hex4(digits: &[u8]) -> Option<u16> {
    digits.iter().try_fold(0u16, |value, &b| {
        Some(value << 4 | (b as char).to_digit(16)? as u16)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{Ids, Seen, Violation, body_model, probe};
    use super::*;

    /// The verdict on each line, read by the fast path where it answers or by the reference
    /// path alone; then the endpoint and model the lines set.
    fn verdicts(
        lines: &[String],
        fast: bool,
    ) -> (Vec<Result<(), Violation>>, Option<String>, Option<String>) {
        let mut seen = Seen {
            ids: Ids::default(),
            endpoint: None,
            model: None,
        };
        let verdicts = lines
            .iter()
            .zip(1..)
            .map(|(text, line_no)| {
                let probe = match fast.then(|| fields(text)).flatten() {
                    Some(probe) => probe,
                    None => probe(text, line_no)?,
                };
                seen.check(probe, line_no)
            })
            .collect();
        (verdicts, seen.endpoint, seen.model)
    }

    /// When the fast path reads a line, the reference path reads the same fields from it.
    fn agrees(text: &str) -> Result<bool, TestCaseError> {
        let Some(fast) = fields(text) else {
            return Ok(false);
        };
        let slow = probe(text, 1).map_err(|v| {
            TestCaseError::fail(format!("fast path read, reference refused ({v}): {text:?}"))
        })?;
        prop_assert_eq!(&slow.custom_id, &fast.custom_id, "{:?}", text);
        prop_assert_eq!(&slow.method, &fast.method, "{:?}", text);
        prop_assert_eq!(&slow.url, &fast.url, "{:?}", text);
        let Body::Model(model) = fast.body else {
            return Err(TestCaseError::fail("the fast path reads the model"));
        };
        prop_assert_eq!(body_model(slow.body, 1), Ok(Some(model)), "{:?}", text);
        Ok(true)
    }

    fn whitespace() -> impl Strategy<Value = &'static str> {
        prop_oneof![6 => Just(""), 2 => Just(" "), 1 => Just("\t"), 1 => Just("\r"), 1 => Just(" \r\t ")]
    }

    /// A JSON string, now and then one JSON readers refuse.
    fn string() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            20 => "[a-zA-Z0-9 _/-]{0,12}",
            2 => Just("é€".to_owned()),
            2 => Just("😀".to_owned()),
            4 => prop::sample::select(vec![
                "\\n", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\r", "\\t", "\\u00e9",
                "\\u00E9", "\\ud83d\\ude00", "\\uD83D\\uDE00", "\\u0000", "\\uffff",
            ])
            .prop_map(str::to_owned),
            1 => prop::sample::select(vec![
                "\\ud800", "\\udc00", "\\ud800\\ud800", "\\ud800x", "\\ud800\\n", "\\x", "\\u12",
                "\\u+123", "\\u00g0", "\u{1}", "\u{1f}", "\t", "\u{7f}", "\\",
            ])
            .prop_map(str::to_owned),
        ];
        prop::collection::vec(piece, 0..5).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
    }

    /// A JSON number, now and then one out of range or not a number at all.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => any::<i64>().prop_map(|n| n.to_string()),
            8 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
            6 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
            3 => prop::sample::select(vec![
                "0", "-0", "0.5", "2.5E+3", "1e308", "1e-400", "-1.7976931348623157e308",
                "1e400", "-1e400", "1E309", "-1.7976931348623158e308", "1.7976931348623159e308",
                "01", "-01", "1.", ".5", "1e", "1e+", "-", "+1", "1.5.3", "0x10", "--1",
            ])
            .prop_map(str::to_owned),
            1 => (295usize..305, any::<bool>()).prop_map(|(n, minus)| {
                format!("{}1{}", if minus { "-" } else { "" }, "0".repeat(n))
            }),
        ]
    }

    /// Any JSON value, nested a few deep, now and then a broken one or one nested about as deep
    /// as the limit.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            6 => string(),
            6 => number(),
            2 => prop::sample::select(vec!["true", "false", "null", "nul", "True", "nullx"])
                .prop_map(str::to_owned),
            1 => (MAX_NESTING - 8..MAX_NESTING + 3).prop_map(|n| "[".repeat(n) + &"]".repeat(n)),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            let separated = |items: Vec<String>, ws: &str| items.join(&format!("{ws},{ws}"));
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..4), whitespace())
                    .prop_map(move |(items, ws)| format!("[{ws}{}{ws}]", separated(items, ws))),
                (
                    prop::collection::vec((string(), inner), 0..4),
                    whitespace(),
                    any::<bool>()
                )
                    .prop_map(move |(members, ws, trailing_comma)| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(k, v)| format!("{k}{ws}:{ws}{v}"))
                            .collect();
                        let comma = if trailing_comma && !members.is_empty() && ws == " " {
                            ","
                        } else {
                            ""
                        };
                        format!("{{{ws}{}{comma}{ws}}}", separated(members, ws))
                    }),
            ]
        })
    }

    /// An object of `members` (key and value), in any order, spaced by `ws`.
    fn object(members: Vec<(String, String)>, ws: &str) -> String {
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("\"{k}\"{ws}:{ws}{v}"))
            .collect();
        format!("{{{ws}{}{ws}}}", members.join(&format!("{ws},{ws}")))
    }

    /// A key of the line or of its body: mostly another than the fields', now and then a
    /// field's (a duplicate), an escaped one, or a field's spelled with an escape.
    fn key(fields: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop_oneof![
            1 => prop::sample::select(fields).prop_map(str::to_owned),
            6 => "[a-z_]{1,10}",
            1 => prop::sample::select(vec!["custom\\u005fid", "mod\\u0065l", "a\\nb", "\\u0062ody"])
                .prop_map(str::to_owned),
        ]
    }

    /// A request line: the four fields (each usually right), in any order, and more members
    /// now and then (another value, a duplicate, an escaped key).
    fn request() -> impl Strategy<Value = String> {
        let text = |fine: &'static str, others: Vec<&'static str>| {
            prop_oneof![
                12 => Just(fine.to_owned()),
                1 => prop::sample::select(others).prop_map(str::to_owned),
                1 => value(),
            ]
        };
        let model = text(
            "\"gpt-4o-mini\"",
            vec!["\"\"", "\"gpt\\u002d4o-mini\"", "\"other\"", "null"],
        );
        let extra_body = prop::collection::vec((key(&["model", "messages"]), value()), 0..3);
        let body = (model, extra_body, whitespace(), 0..16u8).prop_flat_map(
            |(model, extra, ws, shape)| {
                let mut members = vec![("model".to_owned(), model)];
                members.extend(extra);
                Just(members)
                    .prop_shuffle()
                    .prop_map(move |members| match shape {
                        0 => "[]".to_owned(),
                        1 => "\"{}\"".to_owned(),
                        _ => object(members, ws),
                    })
            },
        );
        let id = prop_oneof![
            12 => "\"[a-z0-9-]{0,8}\"".boxed(),
            1 => string().boxed(),
            1 => value().boxed(),
        ];
        let method = text("\"POST\"", vec!["\"GET\"", "\"P\\u004fST\"", "\"post\""]);
        let url = text(
            "\"/v1/chat/completions\"",
            vec!["\"/v1/embeddings\"", "\"\\/v1\\/chat\\/completions\""],
        );
        let extra = prop::collection::vec(
            (
                key(&["custom_id", "method", "url", "body", "metadata"]),
                value(),
            ),
            0..3,
        );
        (id, method, url, body, extra, whitespace(), whitespace()).prop_flat_map(
            |(id, method, url, body, extra, ws, edge)| {
                let mut members = vec![
                    ("custom_id".to_owned(), id),
                    ("method".to_owned(), method),
                    ("url".to_owned(), url),
                    ("body".to_owned(), body),
                ];
                members.extend(extra);
                Just(members)
                    .prop_shuffle()
                    .prop_map(move |members| format!("{edge}{}{edge}", object(members, ws)))
            },
        )
    }

    /// A request line with a few bytes changed, inserted or removed (then made UTF-8 again).
    fn mutated() -> impl Strategy<Value = String> {
        let edit = (
            any::<prop::sample::Index>(),
            0..3u8,
            prop::sample::select(b"\"\\{}[],: \t\r\x01\x1feE+-.0u9a\xc3".to_vec()),
        );
        (request(), prop::collection::vec(edit, 1..4)).prop_map(|(line, edits)| {
            let mut bytes = line.into_bytes();
            for (at, op, byte) in edits {
                let at = at.index(bytes.len() + 1);
                match op {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }

    /// Whether a key of the line or of its body has an escape: the fast path leaves those to the
    /// reference path. Only for the lines of [`request`], whose other keys are not escaped
    /// (strings in values may be).
    fn escaped_field_key(line: &str) -> bool {
        ["custom\\u005fid", "mod\\u0065l", "a\\nb", "\\u0062ody"]
            .iter()
            .any(|k| line.contains(&format!("\"{k}\"")))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn the_fast_path_reads_what_the_reference_reads_and_reads_every_plain_valid_line(
            line in request(),
        ) {
            let read = agrees(&line)?;
            let slow = probe(&line, 1);
            let valid = slow.is_ok_and(|p| {
                p.custom_id.is_some() && p.method.is_some() && p.url.is_some()
                    && body_model(p.body, 1).is_ok_and(|m| m.is_some())
            });
            // A well-formed line whose keys hold no escape takes the fast path.
            if valid && !escaped_field_key(&line) {
                prop_assert!(read, "the fast path declined a valid line: {:?}", line);
            }
        }

        #[test]
        fn the_fast_path_never_reads_a_damaged_line_otherwise(line in mutated()) {
            agrees(&line)?;
        }

        #[test]
        fn a_file_gets_the_same_verdict_on_every_line_with_or_without_the_fast_path(
            lines in prop::collection::vec(prop_oneof![3 => request(), 1 => mutated()], 1..6),
        ) {
            prop_assert_eq!(verdicts(&lines, true), verdicts(&lines, false));
        }
    }

    #[test]
    fn every_line_of_the_fuzz_corpus_gets_the_same_verdict_with_or_without_the_fast_path() {
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/batchfile");
        let mut lines_read = 0;
        for entry in std::fs::read_dir(&corpus).expect("the committed corpus") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let Some(file) = data.get(3..) else { continue };
            let lines: Vec<String> = file
                .split(|&b| b == b'\n')
                .filter_map(|line| std::str::from_utf8(line).ok())
                .map(|line| line.strip_suffix('\r').unwrap_or(line).to_owned())
                .collect();
            for line in &lines {
                lines_read += usize::from(agrees(line).expect("the paths agree"));
            }
            assert_eq!(verdicts(&lines, true), verdicts(&lines, false), "{lines:?}");
        }
        assert!(
            lines_read >= 100,
            "only {lines_read} lines took the fast path"
        );
    }
}
