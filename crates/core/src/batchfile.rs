//! The batch input file format: one request per line, checked in a single streaming pass.
//!
//! The same rules serve the daemon (before anything is uploaded) and the simulator (when a batch
//! is created), so a file the daemon accepts is one the simulated service accepts, and a rule has
//! one name everywhere: the `code` of a [`Violation`] is what `.reason.json` files and the
//! simulator's `errors.data` entries carry.
//!
//! Two line formats are known ([`Format`]): OpenAI's Batch API line,
//! `{"custom_id", "method", "url", "body"}`, and Anthropic's Message Batches request,
//! `{"custom_id", "params"}`.
//!
//! Rules, in the order they are checked: no byte-order mark; not empty; every line valid UTF-8,
//! a JSON object that any JSON reader can read (no nesting deeper than [`MAX_NESTING`], for
//! Anthropic [`ANTHROPIC_MAX_NESTING`] as the create request nests each line two deeper; no
//! number beyond an f64's range, no lone surrogate in a `\u` escape: the syntax allows all
//! three, readers refuse them), with a string `custom_id` (for Anthropic, 1 to 64 letters,
//! digits, `_` and `-`: [`ANTHROPIC_CUSTOM_ID`]) unique in the file, then
//! - for OpenAI: `method` `"POST"`, a string `url` equal to the endpoint, and a `body` object
//!   whose string `model` (at most [`MAX_MODEL_CHARS`] characters) is the same on every line;
//! - for Anthropic: no member but `custom_id` and `params`, and a `params` object with a
//!   string `model` (at most [`MAX_MODEL_CHARS`] characters; it may differ from line to line),
//!   a positive integer `max_tokens` and a non-empty array `messages`;
//!
//! at most `max_requests` lines and `max_bytes` bytes (for Anthropic, [`Limits::ANTHROPIC`]
//! keeps the request body under the service's limit), unless the file may be split, in which
//! case it is cut at line boundaries into parts that each respect both limits.
//!
//! Each OpenAI line is read twice at most: once by the fast path ([`scan`]), which reads a
//! well-formed line in one pass and answers only for one that keeps every rule up to its
//! fields' own, and, when it declines, by the reference path (serde_json, then a pass for what
//! serde_json lets through), which names the fault. The rules of the fields are checked once,
//! on what either read. Anthropic lines take the reference path alone ([`anthropic`]).

pub mod anthropic;
mod hash;
mod scan;

use std::borrow::Cow;
use std::hash::{BuildHasher, RandomState};
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The limits one batch input file must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most requests (lines) in one batch.
    pub max_requests: u64,
    /// Most bytes in one batch input file.
    pub max_bytes: u64,
}

impl Limits {
    /// The limits of an Anthropic Message Batches file: at most 100,000 requests, and a
    /// create request whose body is at most 256 MB, read as 256,000,000 bytes (the smaller
    /// reading, so a part is under the limit whichever the service means).
    ///
    /// The body built from a part is `{"requests":[` (13 bytes), the part's lines as written,
    /// without their line ends, joined by `,`, then `]}` (2 bytes). Each of the part's lines
    /// but perhaps the last ends with `\n` or `\r\n`, at least one byte, and those n − 1 ends
    /// at least pay for the n − 1 commas; so the body is at most the part's bytes plus 15, and
    /// `max_bytes` is 256,000,000 − 15 = 255,999,985. (That holds when the lines are sent byte
    /// for byte as the file has them; a sender that rewrites them could make them longer.)
    pub const ANTHROPIC: Limits = Limits {
        max_requests: 100_000,
        max_bytes: ANTHROPIC_MAX_BODY_BYTES - ANTHROPIC_BODY_OVERHEAD,
    };

    /// These limits, each no higher than `ceiling`'s.
    pub fn within(self, ceiling: Limits) -> Limits {
        Limits {
            max_requests: self.max_requests.min(ceiling.max_requests),
            max_bytes: self.max_bytes.min(ceiling.max_bytes),
        }
    }
}

/// The largest body of a Message Batches create request, in bytes: 256 MB, decimal.
pub const ANTHROPIC_MAX_BODY_BYTES: u64 = 256_000_000;

/// What the create request's body adds to a part's lines: `{"requests":[` and `]}`.
const ANTHROPIC_BODY_OVERHEAD: u64 = (br#"{"requests":["#.len() + br#"]}"#.len()) as u64;

/// The pattern an Anthropic `custom_id` must match.
pub const ANTHROPIC_CUSTOM_ID: &str = "^[a-zA-Z0-9_-]{1,64}$";

/// The format of a file's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// OpenAI's Batch API: `{"custom_id", "method": "POST", "url", "body": {"model", ...}}`,
    /// one endpoint and one model for the whole file.
    #[default]
    OpenAi,
    /// Anthropic's Message Batches: `{"custom_id", "params": {"model", "max_tokens",
    /// "messages", ...}}`, sent as the `requests` of `POST /v1/messages/batches`; each line
    /// may name its own model.
    Anthropic,
}

/// What the caller asks of the file.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The format of the lines.
    pub format: Format,
    /// The endpoint every line's `url` must equal; `None` takes it from the first line.
    /// OpenAI's format only: Anthropic's lines have no `url`, and this is not read.
    pub endpoint: Option<&'a str>,
    pub limits: Limits,
    /// Cut a file over the limits into parts instead of refusing it.
    pub split: bool,
}

/// A contiguous run of whole lines, `[start, end)` in bytes, that fits in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Part {
    pub start: u64,
    pub end: u64,
    pub requests: u64,
}

/// What a valid file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Lower-case hex SHA-256 of the whole content.
    pub sha256: String,
    pub bytes: u64,
    pub requests: u64,
    /// The lines' `url`; for Anthropic's format, whose lines have none, `/v1/messages`, the
    /// endpoint each request of the batch goes to.
    pub endpoint: String,
    /// The model of every line; for Anthropic's format, where lines may name different
    /// models, the first line's.
    pub model: String,
    /// One part when the file fits in one batch; several when it was split.
    pub parts: Vec<Part>,
}

/// The rule a file breaks; [`Rule::code`] is its stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Bom,
    Empty,
    NotUtf8,
    BlankLine,
    InvalidJson,
    NotAnObject,
    MissingCustomId,
    DuplicateCustomId,
    InvalidMethod,
    MissingUrl,
    UrlMismatch,
    MissingBody,
    MissingModel,
    ModelTooLong,
    MixedModels,
    TooManyRequests,
    TooLarge,
    Unreadable,
    TooDeep,
    NumberOutOfRange,
    LoneSurrogate,
    /// Anthropic: a `custom_id` that does not match [`ANTHROPIC_CUSTOM_ID`].
    InvalidCustomId,
    /// Anthropic: no `params` object.
    MissingParams,
    /// Anthropic: `params.max_tokens` missing, not an integer or below 1.
    InvalidMaxTokens,
    /// Anthropic: `params.messages` missing, not an array or empty.
    MissingMessages,
    /// Anthropic: a member of the line other than `custom_id` and `params`.
    UnknownField,
}

impl Rule {
    /// The stable snake_case name of the rule.
    pub fn code(self) -> &'static str {
        match self {
            Rule::Bom => "byte_order_mark",
            Rule::Empty => "empty_file",
            Rule::NotUtf8 => "invalid_utf8",
            Rule::BlankLine => "blank_line",
            Rule::InvalidJson => "invalid_json_line",
            Rule::NotAnObject => "line_not_object",
            Rule::MissingCustomId => "missing_custom_id",
            Rule::DuplicateCustomId => "duplicate_custom_id",
            Rule::InvalidMethod => "invalid_method",
            Rule::MissingUrl => "missing_url",
            Rule::UrlMismatch => "mismatched_url",
            Rule::MissingBody => "missing_body",
            Rule::MissingModel => "missing_model",
            Rule::ModelTooLong => "model_too_long",
            Rule::MixedModels => "mismatched_model",
            Rule::TooManyRequests => "too_many_requests",
            Rule::TooLarge => "file_too_large",
            Rule::Unreadable => "unreadable_file",
            Rule::TooDeep => "nesting_too_deep",
            Rule::NumberOutOfRange => "number_out_of_range",
            Rule::LoneSurrogate => "lone_surrogate",
            Rule::InvalidCustomId => "invalid_custom_id",
            Rule::MissingParams => "missing_params",
            Rule::InvalidMaxTokens => "invalid_max_tokens",
            Rule::MissingMessages => "missing_messages",
            Rule::UnknownField => "unknown_field",
        }
    }
}

/// Why a file was refused: the rule, the 1-based line when one line is at fault, and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message} (rule {})", line.map(|l| format!("line {l}: ")).unwrap_or_default(), rule.code())]
pub struct Violation {
    pub rule: Rule,
    pub line: Option<u64>,
    pub message: String,
}

impl Violation {
    fn at(rule: Rule, line: u64, message: impl Into<String>) -> Self {
        Violation {
            rule,
            line: Some(line),
            message: message.into(),
        }
    }

    fn whole(rule: Rule, message: impl Into<String>) -> Self {
        Violation {
            rule,
            line: None,
            message: message.into(),
        }
    }
}

/// The fields of a line the rules read: the string ones as strings (`None` when a field is
/// missing or not a string), `body` as far as it was read.
struct Probe<'a> {
    custom_id: Option<Cow<'a, str>>,
    method: Option<Cow<'a, str>>,
    url: Option<Cow<'a, str>>,
    body: Body<'a>,
}

/// A line's `body`.
enum Body<'a> {
    /// An object, with this string `model` (read by the fast path, [`scan`]).
    Model(Cow<'a, str>),
    /// As written (read by the reference path, [`probe`]): its rules are checked after those of
    /// the fields before it.
    Raw(Option<&'a RawValue>),
}

#[derive(Deserialize)]
struct LineProbe<'a> {
    #[serde(borrow, default)]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BodyProbe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
}

/// Reads a JSON string out of a raw value, or `None` when it is not a string.
fn as_string(raw: &RawValue) -> Option<Cow<'static, str>> {
    serde_json::from_str::<String>(raw.get())
        .ok()
        .map(Cow::Owned)
}

fn is_object(raw: &str) -> bool {
    raw.trim_start().starts_with('{')
}

/// The reference path: reads any line with serde_json and names its fault, if it has one
/// before its fields' own rules.
fn probe(text: &str, line_no: u64) -> Result<Probe<'_>, Violation> {
    let probe: LineProbe<'_> = read_line(text, MAX_NESTING, line_no)?;
    Ok(Probe {
        custom_id: probe.custom_id.and_then(as_string),
        method: probe.method.and_then(as_string),
        url: probe.url.and_then(as_string),
        body: Body::Raw(probe.body),
    })
}

/// Reads a line as `T` with serde_json, and names the fault of a line that is not a JSON
/// object any JSON reader can read, nested at most `max_depth` deep.
fn read_line<'a, T: Deserialize<'a>>(
    text: &'a str,
    max_depth: usize,
    line_no: u64,
) -> Result<T, Violation> {
    if !is_object(text) {
        // Still report broken JSON as such, before complaining about its shape.
        if let Err(e) = serde_json::from_str::<&RawValue>(text) {
            return Err(Violation::at(
                Rule::InvalidJson,
                line_no,
                format!("the line is not valid JSON: {e}"),
            ));
        }
        return Err(Violation::at(
            Rule::NotAnObject,
            line_no,
            "the line must be a JSON object",
        ));
    }
    let read = serde_json::from_str(text).map_err(|e| {
        Violation::at(
            Rule::InvalidJson,
            line_no,
            format!("the line is not valid JSON: {e}"),
        )
    })?;
    check_values(text.as_bytes(), max_depth, line_no)?;
    Ok(read)
}

/// The model of a line's `body`, or why it has none.
fn body_model(body: Body<'_>, line_no: u64) -> Result<Option<Cow<'_, str>>, Violation> {
    let body = match body {
        Body::Model(model) => return Ok(Some(model)),
        Body::Raw(body) => body,
    };
    let body = body.filter(|b| is_object(b.get())).ok_or_else(|| {
        Violation::at(Rule::MissingBody, line_no, "the line has no `body` object")
    })?;
    let body: BodyProbe<'_> = serde_json::from_str(body.get()).map_err(|e| {
        Violation::at(
            Rule::InvalidJson,
            line_no,
            format!("`body` is not valid JSON: {e}"),
        )
    })?;
    Ok(body.model.and_then(as_string))
}

/// The `custom_id`s seen so far: their text one after the other, and a table of where each
/// is: two allocations in all rather than one an id, and a third less memory than a set of
/// strings (a file of 50,000 lines is common, and one of a million may be split).
#[derive(Default)]
struct Ids {
    text: String,
    /// Where each id is in `text`, hashed by its text.
    at: hashbrown::HashTable<(usize, usize)>,
    /// Keyed at random, as the standard library's sets are: a file cannot choose ids that
    /// collide.
    hasher: RandomState,
}

impl Ids {
    /// Adds `id`; false when it was there already.
    fn insert(&mut self, id: &str) -> bool {
        let Ids { text, at, hasher } = self;
        let entry = at.entry(
            hasher.hash_one(id),
            |&(start, end)| &text[start..end] == id,
            |&(start, end)| hasher.hash_one(&text[start..end]),
        );
        let hashbrown::hash_table::Entry::Vacant(slot) = entry else {
            return false;
        };
        slot.insert((text.len(), text.len() + id.len()));
        text.push_str(id);
        true
    }
}

/// What the lines so far set, that the next must agree with.
struct Seen {
    ids: Ids,
    endpoint: Option<String>,
    model: Option<String>,
}

impl Seen {
    /// Checks the rules of a line's fields, in their order, and records what it sets.
    fn check(&mut self, probe: Probe<'_>, line_no: u64) -> Result<(), Violation> {
        let custom_id = probe.custom_id.ok_or_else(|| {
            Violation::at(
                Rule::MissingCustomId,
                line_no,
                "the line has no string `custom_id`",
            )
        })?;
        if custom_id.is_empty() {
            return Err(Violation::at(
                Rule::MissingCustomId,
                line_no,
                "`custom_id` is empty",
            ));
        }
        if !self.ids.insert(&custom_id) {
            return Err(Violation::at(
                Rule::DuplicateCustomId,
                line_no,
                format!(
                    "`custom_id` {custom_id:?} appears more than once; each must be unique in the file"
                ),
            ));
        }

        match probe.method {
            Some(m) if m == "POST" => {}
            Some(m) => {
                return Err(Violation::at(
                    Rule::InvalidMethod,
                    line_no,
                    format!("`method` is {m:?}; it must be \"POST\""),
                ));
            }
            None => {
                return Err(Violation::at(
                    Rule::InvalidMethod,
                    line_no,
                    "the line has no string `method`; it must be \"POST\"",
                ));
            }
        }

        let url = probe.url.ok_or_else(|| {
            Violation::at(Rule::MissingUrl, line_no, "the line has no string `url`")
        })?;
        match &self.endpoint {
            Some(expected) if *expected != url => {
                return Err(Violation::at(
                    Rule::UrlMismatch,
                    line_no,
                    format!(
                        "`url` is {url:?}, but the batch endpoint is {expected:?}; every line must use the endpoint"
                    ),
                ));
            }
            Some(_) => {}
            None => self.endpoint = Some(url.into_owned()),
        }

        let line_model = body_model(probe.body, line_no)?
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                Violation::at(Rule::MissingModel, line_no, "`body` has no string `model`")
            })?;
        if line_model.len() > MAX_MODEL_CHARS && line_model.chars().count() > MAX_MODEL_CHARS {
            return Err(Violation::at(
                Rule::ModelTooLong,
                line_no,
                format!(
                    "`body.model` is {} characters long; a model name has at most {MAX_MODEL_CHARS}",
                    line_model.chars().count()
                ),
            ));
        }
        match &self.model {
            Some(first) if *first != line_model => Err(Violation::at(
                Rule::MixedModels,
                line_no,
                format!(
                    "`body.model` is {line_model:?}, but earlier lines use {first:?}; a batch holds one model"
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.model = Some(line_model.into_owned());
                Ok(())
            }
        }
    }
}

/// How much of the file one read asks for; a line longer than this grows the buffer (up to
/// the longest line a batch may hold).
const CHUNK: usize = 256 * 1024;

/// Validates `reader` against `expect` in one pass, without holding more than one line in memory
/// (plus the set of `custom_id`s). A large file is hashed on a second thread meanwhile.
pub fn validate(reader: impl Read, expect: Expect<'_>) -> Result<Summary, Violation> {
    std::thread::scope(|scope| validate_in(scope, reader, expect))
}

fn validate_in<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    mut reader: impl Read,
    expect: Expect<'_>,
) -> Result<Summary, Violation> {
    let mut hash = hash::Hash::new(scope);
    let mut pass = Pass::new(expect);
    let limits = expect.limits;
    // Lines are checked where they were read: `buf[start..end]` is what is left to check, and
    // `buf[start..scanned]` holds no newline.
    let mut buf = vec![0u8; CHUNK];
    let (mut start, mut scanned, mut end) = (0, 0, 0);
    loop {
        if let Some(at) = memchr::memchr(b'\n', &buf[scanned..end]) {
            let stop = scanned + at + 1;
            pass.line(&buf[start..stop])?;
            (start, scanned) = (stop, stop);
            continue;
        }
        scanned = end;
        // A line longer than a whole batch may be is refused without holding more of it.
        if (end - start) as u64 > limits.max_bytes {
            return Err(pass.line_too_large(pass.line_no + 1));
        }
        if start > 0 {
            buf.copy_within(start..end, 0);
            (scanned, end) = (end - start, end - start);
            start = 0;
        }
        if end == buf.len() {
            let longest = usize::try_from(limits.max_bytes + 1).unwrap_or(usize::MAX);
            buf.resize(buf.len().saturating_mul(2).min(longest), 0);
        }
        let read = loop {
            match reader.read(&mut buf[end..]) {
                Ok(read) => break read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Violation::whole(
                        Rule::Unreadable,
                        format!("the file could not be read: {e}"),
                    ));
                }
            }
        };
        if read == 0 {
            if end > start {
                pass.line(&buf[start..end])?;
            }
            break;
        }
        hash.update(&buf[end..end + read]);
        end += read;
    }
    pass.finish(hash.finish())
}

/// One validation pass between two lines: what the lines so far set and where they end.
struct Pass<'a> {
    expect: Expect<'a>,
    seen: Seen,
    /// Bytes in the lines so far.
    offset: u64,
    /// Lines so far: the 1-based number of the last one.
    line_no: u64,
    parts: Vec<Part>,
    current: Part,
}

impl<'a> Pass<'a> {
    fn new(expect: Expect<'a>) -> Self {
        Pass {
            expect,
            seen: Seen {
                ids: Ids::default(),
                endpoint: match expect.format {
                    Format::OpenAi => expect.endpoint.map(str::to_owned),
                    Format::Anthropic => Some(anthropic::ENDPOINT.to_owned()),
                },
                model: None,
            },
            offset: 0,
            line_no: 0,
            parts: Vec::new(),
            current: Part {
                start: 0,
                end: 0,
                requests: 0,
            },
        }
    }

    fn line_too_large(&self, line_no: u64) -> Violation {
        Violation::at(
            Rule::TooLarge,
            line_no,
            format!(
                "the line alone is larger than the limit of {} bytes per batch",
                self.expect.limits.max_bytes
            ),
        )
    }

    /// Checks the next line, `buf` with its newline (the last line may lack one).
    fn line(&mut self, buf: &[u8]) -> Result<(), Violation> {
        let limits = self.expect.limits;
        self.line_no += 1;
        let line_no = self.line_no;
        let line_len = buf.len() as u64;
        if line_len > limits.max_bytes {
            return Err(self.line_too_large(line_no));
        }
        if line_no == 1 && buf.starts_with(b"\xEF\xBB\xBF") {
            return Err(Violation::at(
                Rule::Bom,
                1,
                "the file starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM",
            ));
        }
        if !self.expect.split {
            if self.offset + line_len > limits.max_bytes {
                return Err(Violation::at(
                    Rule::TooLarge,
                    line_no,
                    format!(
                        "the file is larger than the limit of {} bytes",
                        limits.max_bytes
                    ),
                ));
            }
            if line_no > limits.max_requests {
                return Err(Violation::at(
                    Rule::TooManyRequests,
                    line_no,
                    format!(
                        "the file has more than the limit of {} requests",
                        limits.max_requests
                    ),
                ));
            }
        }
        let text = std::str::from_utf8(buf).map_err(|e| {
            Violation::at(
                Rule::NotUtf8,
                line_no,
                format!("the line is not valid UTF-8 ({e})"),
            )
        })?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            return Err(Violation::at(
                Rule::BlankLine,
                line_no,
                "the line is empty; every line must be one request",
            ));
        }
        match self.expect.format {
            Format::OpenAi => {
                // The fast path reads a well-formed line in one pass; any other line is read
                // (and its fault named) by the reference path.
                let probe = match scan::fields(text) {
                    Some(fields) => fields,
                    None => probe(text, line_no)?,
                };
                self.seen
                    .check(probe, line_no)
                    .map_err(|v| anthropic::hint_for_openai(v, text))?;
            }
            Format::Anthropic => anthropic::check(&mut self.seen, text, line_no)?,
        }

        if self.expect.split {
            let current = &mut self.current;
            let full = current.requests + 1 > limits.max_requests
                || (current.end - current.start) + line_len > limits.max_bytes;
            if full && current.requests > 0 {
                self.parts.push(*current);
                *current = Part {
                    start: self.offset,
                    end: self.offset,
                    requests: 0,
                };
            }
            current.end += line_len;
            current.requests += 1;
        }
        self.offset += line_len;
        Ok(())
    }

    fn finish(mut self, sha256: String) -> Result<Summary, Violation> {
        if self.line_no == 0 {
            return Err(Violation::whole(
                Rule::Empty,
                "the file is empty; it must hold at least one request",
            ));
        }
        if self.expect.split {
            self.parts.push(self.current);
        } else {
            self.parts.push(Part {
                start: 0,
                end: self.offset,
                requests: self.line_no,
            });
        }
        Ok(Summary {
            sha256,
            bytes: self.offset,
            requests: self.line_no,
            endpoint: self.seen.endpoint.unwrap_or_default(),
            model: self.seen.model.unwrap_or_default(),
            parts: self.parts,
        })
    }
}

/// The longest model name a file may use, in characters. Model names are label values of the
/// metrics (`model="..."`), so a name of thousands of characters would be one in every scrape;
/// real ones (fine-tuned models, Azure deployments) are well under 100.
pub const MAX_MODEL_CHARS: usize = 256;

/// The deepest nesting of arrays and objects a line may have, its own object included.
/// serde_json's default recursion limit refuses a document nested 128 deep, so every line the
/// rules accept is one that serde_json (and the service's readers) can read.
pub const MAX_NESTING: usize = 127;

/// The deepest nesting of arrays and objects an Anthropic line may have, its own object
/// included: two less than [`MAX_NESTING`], because the create request's body,
/// `{"requests":[line, ...]}`, nests each line two deeper, and that body is what readers read.
pub const ANTHROPIC_MAX_NESTING: usize = MAX_NESTING - 2;

/// Checks what the syntax alone allows but JSON readers refuse: nesting deeper than
/// `max_depth` ([`MAX_NESTING`] or [`ANTHROPIC_MAX_NESTING`]), numbers beyond the range of an f64 (`1e400`), and `\u` escapes of half a
/// UTF-16 surrogate pair (`"\ud800"`). `text` is a line that already parsed as JSON, so one
/// forward pass that skips string contents at memchr speed is enough.
fn check_values(text: &[u8], max_depth: usize, line_no: u64) -> Result<(), Violation> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => i = skip_string(text, i + 1, line_no)?,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    let why = if max_depth < MAX_NESTING {
                        " (the create request's body nests each line two deeper)"
                    } else {
                        ""
                    };
                    return Err(Violation::at(
                        Rule::TooDeep,
                        line_no,
                        format!(
                            "the line nests arrays and objects more than {max_depth} deep; JSON readers refuse deeper nesting{why}"
                        ),
                    ));
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < text.len()
                    && matches!(text[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                check_number(&text[start..i], line_no)?;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// A number beyond ±1.8e308 cannot be read as an f64 (serde_json refuses it; others make it
/// infinite). Only a number with an exponent or over 300 digits can get there. serde_json
/// itself decides, because near the edge it refuses numbers that a correctly rounding parser
/// (Rust's `str::parse`) reads as `f64::MAX`: -1.7976931348623158e308.
fn check_number(token: &[u8], line_no: u64) -> Result<(), Violation> {
    if number_in_range(token) {
        return Ok(());
    }
    let text = std::str::from_utf8(token).unwrap_or_default();
    let shown: String = if text.len() > 40 {
        format!("{}…", &text[..40])
    } else {
        text.to_owned()
    };
    Err(Violation::at(
        Rule::NumberOutOfRange,
        line_no,
        format!(
            "the number {shown} is outside the range of a 64-bit float (about ±1.8e308); JSON readers refuse it"
        ),
    ))
}

/// Whether the number `token` (JSON's syntax) is within an f64's range: see [`check_number`].
fn number_in_range(token: &[u8]) -> bool {
    (token.len() < 300 && !token.iter().any(|&b| b == b'e' || b == b'E'))
        || std::str::from_utf8(token).is_ok_and(|text| serde_json::from_str::<f64>(text).is_ok())
}

/// Skips a string whose opening quote is just before `i`; returns the index after its
/// closing quote. Refuses a `\u` escape of a lone surrogate.
fn skip_string(text: &[u8], mut i: usize, line_no: u64) -> Result<usize, Violation> {
    loop {
        let Some(at) = memchr::memchr2(b'"', b'\\', &text[i..]) else {
            return Ok(text.len());
        };
        i += at;
        if text[i] == b'"' {
            return Ok(i + 1);
        }
        // A backslash: `\uXXXX` is six bytes, every other escape two.
        if text.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let unit = hex4(text, i + 2);
        i += 6;
        match unit {
            Some(0xD800..=0xDBFF) => {
                let low = if text.get(i..i + 2) == Some(b"\\u".as_slice()) {
                    hex4(text, i + 2)
                } else {
                    None
                };
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Err(lone_surrogate(&text[i - 6..i], line_no));
                }
                i += 6;
            }
            Some(0xDC00..=0xDFFF) => return Err(lone_surrogate(&text[i - 6..i], line_no)),
            _ => {}
        }
    }
}

/// The value of four hex digits at `at`, if they are there.
fn hex4(text: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(text.get(at..at + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

fn lone_surrogate(escape: &[u8], line_no: u64) -> Violation {
    Violation::at(
        Rule::LoneSurrogate,
        line_no,
        format!(
            "the escape {} is half of a UTF-16 surrogate pair without its other half; it is not text, and JSON readers refuse it",
            String::from_utf8_lossy(escape)
        ),
    )
}

/// The size and SHA-256 (lower-case hex) of the file at `path`, read in one pass.
pub fn sha256_of(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok((bytes, hex(&hasher.finalize())))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_requests: 50_000,
        max_bytes: 200_000_000,
    };

    fn line(id: &str, model: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"{model}","messages":[]}}}}"#
        ) + "\n"
    }

    fn check(content: &str) -> Result<Summary, Violation> {
        validate(
            content.as_bytes(),
            Expect {
                format: Format::OpenAi,
                endpoint: Some("/v1/chat/completions"),
                limits: LIMITS,
                split: false,
            },
        )
    }

    fn rule_of(content: &str) -> (Rule, Option<u64>) {
        let v = check(content).expect_err("the file should be refused");
        (v.rule, v.line)
    }

    #[test]
    fn a_valid_file_is_summarised_with_its_hash_model_and_endpoint() {
        let content = line("a", "gpt-4o-mini") + &line("b", "gpt-4o-mini");
        let s = check(&content).unwrap();
        assert_eq!(s.requests, 2);
        assert_eq!(s.bytes, content.len() as u64);
        assert_eq!(s.model, "gpt-4o-mini");
        assert_eq!(s.endpoint, "/v1/chat/completions");
        assert_eq!(s.sha256, hex(&Sha256::digest(content.as_bytes())));
        assert_eq!(
            s.parts,
            vec![Part {
                start: 0,
                end: content.len() as u64,
                requests: 2
            }]
        );
    }

    #[test]
    fn the_last_line_may_lack_a_newline_and_crlf_is_accepted() {
        let content = line("a", "m").replace('\n', "\r\n") + line("b", "m").trim_end();
        assert_eq!(check(&content).unwrap().requests, 2);
    }

    #[test]
    fn each_rule_is_reported_with_its_line() {
        let ok = line("a", "m");
        let cases: Vec<(String, Rule, Option<u64>)> = vec![
            (String::new(), Rule::Empty, None),
            (format!("\u{feff}{ok}"), Rule::Bom, Some(1)),
            (format!("{ok}\n{ok}"), Rule::BlankLine, Some(2)),
            (format!("{ok}{{not json\n"), Rule::InvalidJson, Some(2)),
            (format!("{ok}[1,2]\n"), Rule::NotAnObject, Some(2)),
            (
                ok.replace("\"custom_id\":\"a\"", "\"custom_id\":7"),
                Rule::MissingCustomId,
                Some(1),
            ),
            (format!("{ok}{ok}"), Rule::DuplicateCustomId, Some(2)),
            (ok.replace("POST", "GET"), Rule::InvalidMethod, Some(1)),
            (
                ok.replace("\"url\":\"/v1/chat/completions\",", ""),
                Rule::MissingUrl,
                Some(1),
            ),
            (
                ok.replace("/v1/chat/completions", "/v1/embeddings"),
                Rule::UrlMismatch,
                Some(1),
            ),
            (
                ok.replace("\"body\":{\"model\":\"m\",\"messages\":[]}", "\"body\":[]"),
                Rule::MissingBody,
                Some(1),
            ),
            (
                ok.replace("\"model\":\"m\",", ""),
                Rule::MissingModel,
                Some(1),
            ),
            (ok.clone() + &line("b", "other"), Rule::MixedModels, Some(2)),
            (
                ok.clone() + &line("b", &"m".repeat(MAX_MODEL_CHARS + 1)),
                Rule::ModelTooLong,
                Some(2),
            ),
        ];
        for (content, rule, line) in cases {
            assert_eq!(rule_of(&content), (rule, line), "content: {content:?}");
        }
    }

    #[test]
    fn a_model_name_may_have_up_to_its_limit_in_characters_not_bytes() {
        let longest = "é".repeat(MAX_MODEL_CHARS);
        assert_eq!(check(&line("a", &longest)).unwrap().model, longest);
        let v = check(&line("a", &"m".repeat(5_000))).unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::ModelTooLong, Some(1)));
        assert_eq!(
            v.to_string(),
            "line 1: `body.model` is 5000 characters long; a model name has at most 256 \
             (rule model_too_long)"
        );
    }

    /// A line whose body holds `value` as its `x`.
    fn with_value(id: &str, value: &str) -> String {
        line(id, "m").replace("\"messages\":[]", &format!("\"messages\":[],\"x\":{value}"))
    }

    /// Nested arrays, `depth` deep.
    fn nested(depth: usize) -> String {
        "[".repeat(depth) + &"]".repeat(depth)
    }

    #[test]
    fn nesting_is_refused_past_the_limit_serde_json_reads() {
        // The line's object and its body are two levels.
        let at_limit = with_value("a", &nested(MAX_NESTING - 2));
        assert!(check(&at_limit).is_ok());
        serde_json::from_str::<serde_json::Value>(at_limit.trim_end())
            .expect("what the rules accept, serde_json reads");
        let over = with_value("a", &nested(MAX_NESTING - 1));
        assert!(serde_json::from_str::<serde_json::Value>(over.trim_end()).is_err());
        assert_eq!(rule_of(&over), (Rule::TooDeep, Some(1)));
        let far_over = line("a", "m") + &with_value("b", &nested(100_000));
        let v = check(&far_over).unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::TooDeep, Some(2)));
        assert!(v.to_string().contains("more than 127 deep"), "{v}");
        // Brackets inside strings are text, not nesting.
        let text = with_value("a", &format!("\"{}\"", "[{".repeat(500)));
        assert!(check(&text).is_ok());
    }

    #[test]
    fn numbers_beyond_an_f64_are_refused_and_small_or_precise_ones_kept() {
        for fine in [
            "1e308",
            "-1.7976931348623157e308",
            "1e-400",
            "0.000001",
            "12345678901234567890123",
            "-0",
            "2.5E+3",
        ] {
            let text = with_value("a", fine);
            assert!(check(&text).is_ok(), "{fine}");
        }
        let long_integer = format!("1{}", "0".repeat(400));
        // Found by fuzzing: the last two are within a rounding of f64::MAX, which Rust's
        // parser reads and serde_json refuses; the rules took Rust's word for it.
        for huge in [
            "1e400",
            "-1e400",
            "1.8e308",
            "1E309",
            long_integer.as_str(),
            "-1.7976931348623158e308",
            "1.7976931348623159e308",
        ] {
            let text = line("a", "m") + &with_value("b", huge);
            assert!(
                serde_json::from_str::<serde_json::Value>(text.lines().nth(1).unwrap()).is_err(),
                "{huge}"
            );
            let v = check(&text).unwrap_err();
            assert_eq!(
                (v.rule, v.line),
                (Rule::NumberOutOfRange, Some(2)),
                "{huge}"
            );
            assert!(v.message.len() < 200, "a long number is cut short: {v}");
        }
        // A number in a string is text.
        assert!(check(&with_value("a", "\"1e400\"")).is_ok());
    }

    #[test]
    fn lone_surrogates_are_refused_and_pairs_kept() {
        for fine in [
            r#""\ud83d\ude00""#,
            r#""\uD83D\uDE00 and \u00e9""#,
            r#""\\ud800""#,
            r#""\ue000""#,
        ] {
            assert!(check(&with_value("a", fine)).is_ok(), "{fine}");
        }
        for lone in [
            r#""\ud800""#,
            r#""\ud800x""#,
            r#""\udc00""#,
            r#""\ud800\ud800""#,
            r#""\ud800\n""#,
        ] {
            let text = line("a", "m") + &with_value("b", lone);
            assert!(
                serde_json::from_str::<serde_json::Value>(text.lines().nth(1).unwrap()).is_err(),
                "{lone}"
            );
            let v = check(&text).unwrap_err();
            assert_eq!((v.rule, v.line), (Rule::LoneSurrogate, Some(2)), "{lone}");
        }
        // In a key too, and in custom_id.
        let key = line("a", "m").replace("\"messages\"", r#""\udfff""#);
        assert_eq!(rule_of(&key), (Rule::LoneSurrogate, Some(1)));
        let id = line("\\ud800", "m");
        assert_eq!(rule_of(&id), (Rule::LoneSurrogate, Some(1)));
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_line() {
        let mut bytes = line("a", "m").into_bytes();
        bytes.extend_from_slice(b"{\"custom_id\":\"\xff\"}\n");
        let v = validate(
            &bytes[..],
            Expect {
                format: Format::OpenAi,
                endpoint: None,
                limits: LIMITS,
                split: false,
            },
        )
        .unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::NotUtf8, Some(2)));
    }

    #[test]
    fn without_an_endpoint_the_first_line_sets_it() {
        let content =
            line("a", "m") + &line("b", "m").replace("/v1/chat/completions", "/v1/embeddings");
        let v = validate(
            content.as_bytes(),
            Expect {
                format: Format::OpenAi,
                endpoint: None,
                limits: LIMITS,
                split: false,
            },
        )
        .unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::UrlMismatch, Some(2)));
    }

    #[test]
    fn limits_refuse_a_file_unless_it_may_be_split() {
        let content: String = (0..5).map(|i| line(&format!("r{i}"), "m")).collect();
        let one = line("r0", "m").len() as u64;
        let tight = Limits {
            max_requests: 2,
            max_bytes: 10_000,
        };
        let v = validate(
            content.as_bytes(),
            Expect {
                format: Format::OpenAi,
                endpoint: None,
                limits: tight,
                split: false,
            },
        )
        .unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::TooManyRequests, Some(3)));
        let small = Limits {
            max_requests: 100,
            max_bytes: one * 2,
        };
        let v = validate(
            content.as_bytes(),
            Expect {
                format: Format::OpenAi,
                endpoint: None,
                limits: small,
                split: false,
            },
        )
        .unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::TooLarge, Some(3)));

        let s = validate(
            content.as_bytes(),
            Expect {
                format: Format::OpenAi,
                endpoint: None,
                limits: tight,
                split: true,
            },
        )
        .unwrap();
        assert_eq!(
            s.parts.iter().map(|p| p.requests).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        assert_eq!(s.parts[0].start, 0);
        assert_eq!(s.parts.last().unwrap().end, content.len() as u64);
        for pair in s.parts.windows(2) {
            assert_eq!(pair[0].end, pair[1].start, "parts must be contiguous");
        }
        let s = validate(
            content.as_bytes(),
            Expect {
                format: Format::OpenAi,
                endpoint: None,
                limits: small,
                split: true,
            },
        )
        .unwrap();
        assert!(s.parts.iter().all(|p| p.end - p.start <= one * 2));
        assert_eq!(s.parts.iter().map(|p| p.requests).sum::<u64>(), 5);
    }

    #[test]
    fn a_single_line_over_the_byte_limit_cannot_be_split() {
        let content = line("a", "m");
        let limits = Limits {
            max_requests: 10,
            max_bytes: 10,
        };
        let v = validate(
            content.as_bytes(),
            Expect {
                format: Format::OpenAi,
                endpoint: None,
                limits,
                split: true,
            },
        )
        .unwrap_err();
        assert_eq!(v.rule, Rule::TooLarge);
    }

    proptest::proptest! {
        // Each case grows the table several times.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        #[test]
        fn the_set_of_ids_finds_again_each_id_and_only_those(
            ids in proptest::collection::vec("[ab]{1,4}|[a-z0-9]{5,12}", 1..2_000),
        ) {
            let mut set = Ids::default();
            let mut reference = std::collections::HashSet::new();
            for id in &ids {
                proptest::prop_assert_eq!(set.insert(id), reference.insert(id.as_str()), "{}", id);
            }
        }
    }

    #[test]
    fn a_large_file_gets_its_hash_and_a_fault_past_its_first_megabytes_its_line() {
        let text = format!("\"{}\"", "lorem ipsum ".repeat(20));
        let lines = 6 * 1024 * 1024 / with_value("r0000000", &text).len();
        let content: String = (0..lines)
            .map(|i| with_value(&format!("r{i:07}"), &text))
            .collect();
        let s = check(&content).unwrap();
        assert_eq!(s.sha256, hex(&Sha256::digest(content.as_bytes())));
        assert_eq!(s.requests, lines as u64);
        let refused = content + &line("r0000001", "m");
        let v = check(&refused).unwrap_err();
        assert_eq!(
            (v.rule, v.line),
            (Rule::DuplicateCustomId, Some(lines as u64 + 1))
        );
    }

    #[test]
    fn the_violation_message_names_the_line_and_the_rule() {
        let v = check(&(line("a", "m") + &line("a", "m"))).unwrap_err();
        let text = v.to_string();
        assert!(text.starts_with("line 2: "), "{text}");
        assert!(text.ends_with("(rule duplicate_custom_id)"), "{text}");
    }
}
