//! Anthropic's Message Batches lines: `{"custom_id": "...", "params": {...}}`, one request of
//! `POST /v1/messages/batches` a line, which the daemon sends as `{"requests": [line, ...]}`.
//!
//! They take the reference path alone: serde_json reads the line once, keeping `custom_id`,
//! `params.model`, `params.max_tokens` and `params.messages` as written ([`RawValue`]), then
//! the pass for what serde_json lets through ([`super::check_values`]) reads it again at
//! memchr speed. One line is in memory at a time, as for OpenAI's.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{
    ANTHROPIC_CUSTOM_ID, ANTHROPIC_MAX_NESTING, MAX_MODEL_CHARS, Rule, Seen, Violation, as_string,
    is_object, read_line,
};

/// The endpoint each request of an Anthropic batch goes to, as [`super::Summary::endpoint`]
/// reports it.
pub const ENDPOINT: &str = "/v1/messages";

/// The longest `custom_id`, in characters (all ASCII).
const MAX_ID_CHARS: usize = 64;

/// What a line holds: `custom_id` as written, `params` as far as it was read, and the name of
/// the first member that is neither.
#[derive(Default)]
struct Line<'a> {
    custom_id: Option<&'a RawValue>,
    params: Option<Params<'a>>,
    unknown: Option<Cow<'a, str>>,
}

/// A line's `params`: not an object, or the members the rules read, as written.
enum Params<'a> {
    NotAnObject,
    Object {
        model: Option<&'a RawValue>,
        max_tokens: Option<&'a RawValue>,
        messages: Option<&'a RawValue>,
    },
}

/// A member's name: one the rules read, or another (borrowed from the line unless escaped).
enum Key<'a> {
    CustomId,
    Params,
    Model,
    MaxTokens,
    Messages,
    Other(Cow<'a, str>),
}

impl<'a> Key<'a> {
    fn of(key: Cow<'a, str>) -> Self {
        match &*key {
            "custom_id" => Key::CustomId,
            "params" => Key::Params,
            "model" => Key::Model,
            "max_tokens" => Key::MaxTokens,
            "messages" => Key::Messages,
            _ => Key::Other(key),
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member's name")
            }
            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::of(Cow::Borrowed(key)))
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key::of(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Takes a member's value as written; a second one of the same name is refused, as serde's
/// derived readers refuse it on OpenAI's lines.
fn once<'de, A: MapAccess<'de>>(
    slot: &mut Option<&'de RawValue>,
    map: &mut A,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

impl<'de> Deserialize<'de> for Line<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LineVisitor;
        impl<'de> Visitor<'de> for LineVisitor {
            type Value = Line<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line<'de>, A::Error> {
                let mut line = Line::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match key {
                        Key::CustomId => once(&mut line.custom_id, &mut map, "custom_id")?,
                        Key::Params if line.params.is_some() => {
                            return Err(de::Error::duplicate_field("params"));
                        }
                        Key::Params => line.params = Some(map.next_value_seed(ParamsSeed)?),
                        other => {
                            // As written, so that nesting past serde_json's recursion limit
                            // is named by its own rule.
                            map.next_value::<&RawValue>()?;
                            if line.unknown.is_none() {
                                line.unknown = Some(match other {
                                    Key::Other(name) => name,
                                    Key::Model => "model".into(),
                                    Key::MaxTokens => "max_tokens".into(),
                                    _ => "messages".into(),
                                });
                            }
                        }
                    }
                }
                Ok(line)
            }
        }
        deserializer.deserialize_map(LineVisitor)
    }
}

/// Reads `params`, whatever its type, in the same pass as the line.
struct ParamsSeed;

impl<'de> DeserializeSeed<'de> for ParamsSeed {
    type Value = Params<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Params<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed {
    type Value = Params<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params<'de>, A::Error> {
        let (mut model, mut max_tokens, mut messages) = (None, None, None);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key {
                Key::Model => once(&mut model, &mut map, "model")?,
                Key::MaxTokens => once(&mut max_tokens, &mut map, "max_tokens")?,
                Key::Messages => once(&mut messages, &mut map, "messages")?,
                _ => {
                    map.next_value::<&RawValue>()?;
                }
            }
        }
        Ok(Params::Object {
            model,
            max_tokens,
            messages,
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Params<'de>, A::Error> {
        while seq.next_element::<&RawValue>()?.is_some() {}
        Ok(Params::NotAnObject)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Params<'de>, E> {
        Ok(Params::NotAnObject)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Params<'de>, E> {
        Ok(Params::NotAnObject)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Params<'de>, E> {
        Ok(Params::NotAnObject)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Params<'de>, E> {
        Ok(Params::NotAnObject)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Params<'de>, E> {
        Ok(Params::NotAnObject)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Params<'de>, E> {
        Ok(Params::NotAnObject)
    }
}

/// `text` shown in a message: escaped, and cut after `most` characters.
fn shown(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// Checks an Anthropic line, `text` without its line end, against the rules in their order,
/// and records its `custom_id` and (for the first line) its model in `seen`.
pub(super) fn check(seen: &mut Seen, text: &str, line_no: u64) -> Result<(), Violation> {
    let line: Line<'_> = read_line(text, ANTHROPIC_MAX_NESTING, line_no)?;
    let at = |rule, message: String| Violation::at(rule, line_no, message);

    let custom_id = line.custom_id.and_then(as_string).ok_or_else(|| {
        at(
            Rule::MissingCustomId,
            "the line has no string `custom_id`".to_owned(),
        )
    })?;
    if let Some(bad) = custom_id
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(at(
            Rule::InvalidCustomId,
            format!(
                "`custom_id` {} has the character {bad:?}, which {ANTHROPIC_CUSTOM_ID} does not allow: only letters, digits, `_` and `-`",
                shown(&custom_id, 100)
            ),
        ));
    }
    if custom_id.is_empty() || custom_id.len() > MAX_ID_CHARS {
        let length = if custom_id.is_empty() {
            "is empty".to_owned()
        } else {
            format!(
                "{} is {} characters long",
                shown(&custom_id, 100),
                custom_id.len()
            )
        };
        return Err(at(
            Rule::InvalidCustomId,
            format!(
                "`custom_id` {length}; it must match {ANTHROPIC_CUSTOM_ID}: 1 to {MAX_ID_CHARS} characters"
            ),
        ));
    }
    if !seen.ids.insert(&custom_id) {
        return Err(at(
            Rule::DuplicateCustomId,
            format!(
                "`custom_id` {custom_id:?} appears more than once; each must be unique in the batch"
            ),
        ));
    }

    if let Some(name) = line.unknown {
        let openai = if matches!(&*name, "method" | "url" | "body") {
            " (it is a member of an OpenAI Batch API line; this batch takes Anthropic Message Batches requests)"
        } else {
            ""
        };
        return Err(at(
            Rule::UnknownField,
            format!(
                "the line has a member {}; a request has only `custom_id` and `params`{openai}",
                shown(&name, 64)
            ),
        ));
    }

    let Some(Params::Object {
        model,
        max_tokens,
        messages,
    }) = line.params
    else {
        return Err(at(
            Rule::MissingParams,
            "the line has no `params` object".to_owned(),
        ));
    };

    let model = model
        .and_then(as_string)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            at(
                Rule::MissingModel,
                "`params` has no string `model`".to_owned(),
            )
        })?;
    if model.len() > MAX_MODEL_CHARS && model.chars().count() > MAX_MODEL_CHARS {
        return Err(at(
            Rule::ModelTooLong,
            format!(
                "`params.model` is {} characters long; a model name has at most {MAX_MODEL_CHARS}",
                model.chars().count()
            ),
        ));
    }

    let Some(max_tokens) = max_tokens else {
        return Err(at(
            Rule::InvalidMaxTokens,
            "`params` has no `max_tokens`; it must be a positive integer".to_owned(),
        ));
    };
    if !serde_json::from_str::<u64>(max_tokens.get()).is_ok_and(|n| n >= 1) {
        return Err(at(
            Rule::InvalidMaxTokens,
            format!(
                "`params.max_tokens` is {}; it must be a positive integer",
                shown_raw(max_tokens.get())
            ),
        ));
    }

    match messages.map(RawValue::get) {
        None => {
            return Err(at(
                Rule::MissingMessages,
                "`params` has no `messages`; it must be an array of at least one message"
                    .to_owned(),
            ));
        }
        Some(raw) if !raw.starts_with('[') => {
            return Err(at(
                Rule::MissingMessages,
                format!(
                    "`params.messages` is {}; it must be an array of at least one message",
                    shown_raw(raw)
                ),
            ));
        }
        Some(raw) if raw[1..].trim_start().starts_with(']') => {
            return Err(at(
                Rule::MissingMessages,
                "`params.messages` is empty; it must hold at least one message".to_owned(),
            ));
        }
        Some(_) => {}
    }

    if seen.model.is_none() {
        seen.model = Some(model.into_owned());
    }
    Ok(())
}

/// A value as written, cut after 40 characters.
fn shown_raw(raw: &str) -> String {
    match raw.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &raw[..cut]),
        None => raw.to_owned(),
    }
}

/// Adds to an OpenAI line's missing `method` that the line looks like an Anthropic request.
pub(super) fn hint_for_openai(mut v: Violation, text: &str) -> Violation {
    if v.rule == Rule::InvalidMethod
        && is_object(text)
        && serde_json::from_str::<Line<'_>>(text).is_ok_and(|line| line.params.is_some())
    {
        v.message.push_str(
            " (the line has `params`, as an Anthropic Message Batches request has; this batch takes OpenAI Batch API lines)",
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::{Expect, Format, Limits, MAX_NESTING, Part, Summary, validate};
    use super::*;

    /// A valid request line.
    fn req(id: &str, model: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","params":{{"model":"{model}","max_tokens":1024,"messages":[{{"role":"user","content":"Hello"}}]}}}}"#
        ) + "\n"
    }

    /// `req("a", "m")` with `from` replaced by `to`, which must be there.
    fn edited(from: &str, to: &str) -> String {
        let line = req("a", "m");
        assert!(line.contains(from), "{from:?} is not in {line:?}");
        line.replacen(from, to, 1)
    }

    fn expect(format: Format, limits: Limits, split: bool) -> Expect<'static> {
        Expect {
            format,
            endpoint: None,
            limits,
            split,
        }
    }

    fn check(content: &str) -> Result<Summary, Violation> {
        validate(
            content.as_bytes(),
            expect(Format::Anthropic, Limits::ANTHROPIC, false),
        )
    }

    #[track_caller]
    fn refused(content: &str) -> Violation {
        check(content).expect_err("the file should be refused")
    }

    #[track_caller]
    fn assert_refused(content: &str, rule: Rule, line: u64) -> Violation {
        let v = refused(content);
        assert_eq!((v.rule, v.line), (rule, Some(line)), "{content:?}: {v}");
        assert!(v.to_string().starts_with(&format!("line {line}: ")), "{v}");
        assert!(
            v.to_string().ends_with(&format!("(rule {})", rule.code())),
            "{v}"
        );
        v
    }

    #[test]
    fn the_new_rules_have_stable_codes() {
        assert_eq!(Rule::InvalidCustomId.code(), "invalid_custom_id");
        assert_eq!(Rule::MissingParams.code(), "missing_params");
        assert_eq!(Rule::InvalidMaxTokens.code(), "invalid_max_tokens");
        assert_eq!(Rule::MissingMessages.code(), "missing_messages");
        assert_eq!(Rule::UnknownField.code(), "unknown_field");
    }

    #[test]
    fn the_limits_keep_the_create_body_within_256_mb() {
        assert_eq!(Limits::ANTHROPIC.max_requests, 100_000);
        assert_eq!(Limits::ANTHROPIC.max_bytes, 255_999_985);
        assert_eq!(
            Limits::ANTHROPIC.max_bytes + br#"{"requests":["#.len() as u64 + br#"]}"#.len() as u64,
            256_000_000
        );
    }

    #[test]
    fn a_valid_file_may_name_several_models_and_reports_the_first() {
        let content = req("a", "claude-sonnet-4-5") + &req("b-2_X", "claude-haiku-4-5");
        let s = check(&content).unwrap();
        assert_eq!(s.requests, 2);
        assert_eq!(s.bytes, content.len() as u64);
        assert_eq!(s.model, "claude-sonnet-4-5");
        assert_eq!(s.endpoint, "/v1/messages");
        assert_eq!(
            s.parts,
            vec![Part {
                start: 0,
                end: content.len() as u64,
                requests: 2
            }]
        );
        // The OpenAI endpoint of the expectation is not read.
        let s = validate(
            content.as_bytes(),
            Expect {
                endpoint: Some("/v1/chat/completions"),
                ..expect(Format::Anthropic, Limits::ANTHROPIC, false)
            },
        )
        .unwrap();
        assert_eq!(s.endpoint, "/v1/messages");
    }

    #[test]
    fn ids_of_up_to_64_letters_digits_underscores_and_dashes_are_accepted() {
        let longest = "aZ0_-".repeat(13)[..64].to_owned();
        let content = req(&longest, "m") + &req("-", "m") + &req("x\\u0079", "m");
        assert_eq!(check(&content).unwrap().requests, 3);
    }

    #[test]
    fn a_custom_id_off_the_pattern_is_refused_with_its_line() {
        let long = "a".repeat(65);
        for id in [
            "",
            long.as_str(),
            "a b",
            "a.b",
            "café",
            "a/b",
            "a\\nb",
            "😀",
        ] {
            let content = req("ok", "m") + &req(id, "m");
            let v = assert_refused(&content, Rule::InvalidCustomId, 2);
            assert!(v.message.contains(ANTHROPIC_CUSTOM_ID), "{v}");
            if !id.is_empty() {
                let unescaped: String = serde_json::from_str(&format!("\"{id}\"")).unwrap();
                assert!(v.message.contains(&format!("{unescaped:?}")), "{v}");
            }
        }
        let v = refused(&req("a b", "m"));
        assert_eq!(
            v.to_string(),
            "line 1: `custom_id` \"a b\" has the character ' ', which ^[a-zA-Z0-9_-]{1,64}$ does \
             not allow: only letters, digits, `_` and `-` (rule invalid_custom_id)"
        );
        let v = refused(&req(&long, "m"));
        assert!(v.message.contains("is 65 characters long"), "{v}");
        let v = refused(&req("", "m"));
        assert!(v.message.starts_with("`custom_id` is empty"), "{v}");
        // A very long id is cut in the message.
        let v = refused(&req(&"x".repeat(100_000), "m"));
        assert_eq!(v.rule, Rule::InvalidCustomId);
        assert!(v.message.len() < 400, "{}", v.message.len());
        let v = refused(&req(&format!("{} {}", "x".repeat(5_000), "y"), "m"));
        assert!(v.message.len() < 400 && v.message.contains("…"), "{v}");
    }

    #[test]
    fn each_rule_is_reported_with_its_line() {
        let ok = req("first", "m");
        let cases: Vec<(String, Rule)> = vec![
            (edited(r#""custom_id":"a","#, ""), Rule::MissingCustomId),
            (edited(r#""a""#, "7"), Rule::MissingCustomId),
            (edited(r#""a""#, "null"), Rule::MissingCustomId),
            (edited(r#""custom_id":"a","#, r#""custom_id":"first","#), Rule::DuplicateCustomId),
            (edited(r#""params":"#, r#""metadata":1,"params":"#), Rule::UnknownField),
            (edited(r#""params""#, r#""Params""#), Rule::UnknownField),
            (
                r#"{"custom_id":"a","params":{"model":"m","max_tokens":1,"messages":[1]},"extra":{}}"#
                    .to_owned()
                    + "\n",
                Rule::UnknownField,
            ),
            (r#"{"custom_id":"a"}"#.to_owned() + "\n", Rule::MissingParams),
            (r#"{"custom_id":"a","params":[]}"#.to_owned() + "\n", Rule::MissingParams),
            (r#"{"custom_id":"a","params":[{"model":"m"}]}"#.to_owned() + "\n", Rule::MissingParams),
            (r#"{"custom_id":"a","params":"{}"}"#.to_owned() + "\n", Rule::MissingParams),
            (r#"{"custom_id":"a","params":null}"#.to_owned() + "\n", Rule::MissingParams),
            (r#"{"custom_id":"a","params":12}"#.to_owned() + "\n", Rule::MissingParams),
            (edited(r#""model":"m","#, ""), Rule::MissingModel),
            (edited(r#""m""#, r#""""#), Rule::MissingModel),
            (edited(r#""m""#, "3"), Rule::MissingModel),
            (edited(r#""m""#, &format!("\"{}\"", "m".repeat(MAX_MODEL_CHARS + 1))), Rule::ModelTooLong),
            (edited(r#""max_tokens":1024,"#, ""), Rule::InvalidMaxTokens),
            (edited("1024", "0"), Rule::InvalidMaxTokens),
            (edited("1024", "-5"), Rule::InvalidMaxTokens),
            (edited("1024", "1024.5"), Rule::InvalidMaxTokens),
            (edited("1024", "1.0"), Rule::InvalidMaxTokens),
            (edited("1024", "1e3"), Rule::InvalidMaxTokens),
            (edited("1024", r#""1024""#), Rule::InvalidMaxTokens),
            (edited("1024", "null"), Rule::InvalidMaxTokens),
            (edited("1024", "18446744073709551616"), Rule::InvalidMaxTokens),
            (edited(r#","messages":[{"role":"user","content":"Hello"}]"#, ""), Rule::MissingMessages),
            (edited(r#"[{"role":"user","content":"Hello"}]"#, "[]"), Rule::MissingMessages),
            (edited(r#"[{"role":"user","content":"Hello"}]"#, "[ \t ]"), Rule::MissingMessages),
            (edited(r#"[{"role":"user","content":"Hello"}]"#, r#"{"role":"user"}"#), Rule::MissingMessages),
            (edited(r#"[{"role":"user","content":"Hello"}]"#, r#""Hello""#), Rule::MissingMessages),
        ];
        for (bad, rule) in cases {
            assert_refused(&(ok.clone() + &bad), rule, 2);
        }
    }

    #[test]
    fn messages_name_the_fault() {
        let v = refused(&edited("1024", "-5"));
        assert_eq!(
            v.message,
            "`params.max_tokens` is -5; it must be a positive integer"
        );
        let v = refused(&edited(r#""max_tokens":1024,"#, ""));
        assert!(v.message.contains("no `max_tokens`"), "{v}");
        let v = refused(&edited("1024", &format!("\"{}\"", "9".repeat(500))));
        assert!(v.message.len() < 150, "a long value is cut: {v}");
        let v = refused(&edited(r#""params":"#, r#""metadata":1,"params":"#));
        assert!(v.message.contains("\"metadata\""), "{v}");
        let v = refused(&edited(r#""params":"#, r#""\u0078\"y":1,"params":"#));
        assert!(v.message.contains(r#"member "x\"y";"#), "{v}");
        let v = refused(&edited(r#"[{"role":"user","content":"Hello"}]"#, "[]"));
        assert!(v.message.contains("empty"), "{v}");
        let v = refused(&edited(r#""params":{"model":"m","#, r#""params":{"#));
        assert!(v.message.contains("`model`"), "{v}");
    }

    #[test]
    fn the_rules_of_a_line_are_checked_in_their_order() {
        // A bad id before an unknown field, an unknown field before a missing `params`, the
        // model before `max_tokens`, `max_tokens` before `messages`.
        let v = refused(&(r#"{"custom_id":"a.b","x":1}"#.to_owned() + "\n"));
        assert_eq!(v.rule, Rule::InvalidCustomId);
        let v = refused(&(r#"{"x":1,"custom_id":"ab"}"#.to_owned() + "\n"));
        assert_eq!(v.rule, Rule::UnknownField);
        let v = refused(
            &(r#"{"custom_id":"a","params":{"max_tokens":0,"messages":[]}}"#.to_owned() + "\n"),
        );
        assert_eq!(v.rule, Rule::MissingModel);
        let v = refused(
            &(r#"{"custom_id":"a","params":{"model":"m","max_tokens":0,"messages":[]}}"#
                .to_owned()
                + "\n"),
        );
        assert_eq!(v.rule, Rule::InvalidMaxTokens);
        // A duplicate of a member the rules read is not JSON a reader can take one way.
        let v = refused(&edited(
            r#""max_tokens":1024,"#,
            r#""max_tokens":1,"max_tokens":1024,"#,
        ));
        assert_eq!(v.rule, Rule::InvalidJson);
        let v = refused(&edited(
            r#""custom_id":"a","#,
            r#""custom_id":"a","custom_id":"b","#,
        ));
        assert_eq!(v.rule, Rule::InvalidJson);
        // Other members of `params` are the service's to judge.
        let fine = edited(
            r#""max_tokens":1024"#,
            r#""max_tokens":1024,"temperature":0.5,"system":[{"type":"text","text":"Be brief"}],"stream":false"#,
        );
        assert!(check(&fine).is_ok());
    }

    #[test]
    fn the_generic_rules_hold_for_anthropic_lines() {
        let ok = req("first", "m");
        let with = |value: &str| {
            ok.clone()
                + &edited(
                    r#""max_tokens":1024"#,
                    &format!(r#""max_tokens":1024,"x":{value}"#),
                )
        };
        let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
        // The line and `params` are two levels, and the create body two more: a line nested
        // as deep as an OpenAI line may be is refused, one nested two less is read within the
        // body by serde_json.
        assert_eq!(ANTHROPIC_MAX_NESTING, MAX_NESTING - 2);
        let at_limit = with(&nested(ANTHROPIC_MAX_NESTING - 2));
        assert!(check(&at_limit).is_ok());
        let body = format!(
            r#"{{"requests":[{}]}}"#,
            at_limit.trim_end().replace('\n', ",")
        );
        serde_json::from_str::<serde_json::Value>(&body).expect("the body is read");
        let over = with(&nested(ANTHROPIC_MAX_NESTING - 1));
        let body = format!(r#"{{"requests":[{}]}}"#, over.trim_end().replace('\n', ","));
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
        let v = refused(&over);
        assert_eq!((v.rule, v.line), (Rule::TooDeep, Some(2)));
        assert!(v.message.contains("more than 125 deep"), "{v}");
        assert!(v.message.contains("two deeper"), "{v}");
        let cases: Vec<(String, Rule, Option<u64>)> = vec![
            (String::new(), Rule::Empty, None),
            (format!("\u{feff}{ok}"), Rule::Bom, Some(1)),
            (format!("{ok}\n{}", req("b", "m")), Rule::BlankLine, Some(2)),
            (format!("{ok}{{not json\n"), Rule::InvalidJson, Some(2)),
            (format!("{ok}[1,2]\n"), Rule::NotAnObject, Some(2)),
            (format!("{ok}\"text\"\n"), Rule::NotAnObject, Some(2)),
            (with(&nested(MAX_NESTING - 2)), Rule::TooDeep, Some(2)),
            (with(&nested(100_000)), Rule::TooDeep, Some(2)),
            (
                ok.clone() + &format!(r#"{{"custom_id":"b","x":{}}}"#, nested(100_000)) + "\n",
                Rule::TooDeep,
                Some(2),
            ),
            (
                ok.clone() + &format!(r#"{{"custom_id":"b","params":{}}}"#, nested(100_000)) + "\n",
                Rule::TooDeep,
                Some(2),
            ),
            (with("1e400"), Rule::NumberOutOfRange, Some(2)),
            (with(r#""\ud800""#), Rule::LoneSurrogate, Some(2)),
            (
                ok.clone() + &req("\\udc00", "m"),
                Rule::LoneSurrogate,
                Some(2),
            ),
        ];
        for (content, rule, line) in cases {
            let v = refused(&content);
            assert_eq!((v.rule, v.line), (rule, line), "{content:.200?}: {v}");
        }
        let mut bytes = ok.into_bytes();
        bytes.extend_from_slice(b"{\"custom_id\":\"\xff\"}\n");
        let v = validate(
            &bytes[..],
            expect(Format::Anthropic, Limits::ANTHROPIC, false),
        )
        .unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::NotUtf8, Some(2)));
        // CRLF line ends and a last line without one are accepted.
        let content = req("a", "m").replace('\n', "\r\n") + req("b", "m").trim_end();
        assert_eq!(check(&content).unwrap().requests, 2);
    }

    #[test]
    fn each_format_refuses_the_other_s_lines_and_says_why() {
        let openai = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[]}}"#.to_owned() + "\n";
        let v = assert_refused(&openai, Rule::UnknownField, 1);
        assert!(v.message.contains("\"method\""), "{v}");
        assert!(v.message.contains("OpenAI Batch API line"), "{v}");

        let v = validate(
            req("a", "m").as_bytes(),
            expect(Format::OpenAi, Limits::ANTHROPIC, false),
        )
        .unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::InvalidMethod, Some(1)));
        assert!(
            v.message.contains("Anthropic Message Batches request"),
            "{v}"
        );
        // An OpenAI line merely missing its method gets no such hint.
        let v = validate(
            openai.replace(r#""method":"POST","#, "").as_bytes(),
            expect(Format::OpenAi, Limits::ANTHROPIC, false),
        )
        .unwrap_err();
        assert_eq!(v.rule, Rule::InvalidMethod);
        assert!(!v.message.contains("Anthropic"), "{v}");
    }

    fn file(lines: usize) -> String {
        (0..lines).map(|i| req(&format!("r{i}"), "m")).collect()
    }

    #[test]
    fn limits_refuse_a_file_too_large_or_with_too_many_requests() {
        let content = file(5);
        let one = req("r0", "m").len() as u64;
        let tight = Limits {
            max_requests: 3,
            max_bytes: 1_000_000,
        };
        let v = validate(content.as_bytes(), expect(Format::Anthropic, tight, false)).unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::TooManyRequests, Some(4)));
        let small = Limits {
            max_requests: 100,
            max_bytes: one * 2,
        };
        let v = validate(content.as_bytes(), expect(Format::Anthropic, small, false)).unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::TooLarge, Some(3)));
        assert_eq!(v.rule.code(), "file_too_large");
        // Exactly at both limits is fine.
        let exact = Limits {
            max_requests: 5,
            max_bytes: content.len() as u64,
        };
        assert!(validate(content.as_bytes(), expect(Format::Anthropic, exact, false)).is_ok());
    }

    #[test]
    fn a_file_over_the_limits_is_split_into_parts_that_keep_both() {
        // Lines of different lengths, so that the byte limit cuts between the request limit's
        // cuts.
        let content: String = (0..40)
            .map(|i| req(&format!("r{i}"), &"m".repeat(1 + i % 7 * 30)))
            .collect();
        let limits = Limits {
            max_requests: 7,
            max_bytes: 1_000,
        };
        let s = validate(content.as_bytes(), expect(Format::Anthropic, limits, true)).unwrap();
        assert_eq!(s.requests, 40);
        assert!(
            s.parts.len() > 40 / 7 + 1,
            "the byte limit cuts too: {:?}",
            s.parts
        );
        let mut at = 0;
        for part in &s.parts {
            assert_eq!(part.start, at, "parts are contiguous");
            assert!(
                part.requests >= 1 && part.requests <= limits.max_requests,
                "{part:?}"
            );
            assert!(part.end - part.start <= limits.max_bytes, "{part:?}");
            let text = &content[part.start as usize..part.end as usize];
            assert!(text.ends_with('\n'));
            assert_eq!(text.lines().count() as u64, part.requests);
            // The create body built from the part is JSON, within the limit plus its frame.
            let body = format!(
                r#"{{"requests":[{}]}}"#,
                text.lines().collect::<Vec<_>>().join(",")
            );
            assert!(body.len() as u64 <= limits.max_bytes + 15, "{}", body.len());
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                value["requests"].as_array().unwrap().len() as u64,
                part.requests
            );
            at = part.end;
        }
        assert_eq!(at, content.len() as u64);
        assert_eq!(s.parts.iter().map(|p| p.requests).sum::<u64>(), 40);

        // The request limit alone.
        let content = file(10);
        let by_count = Limits {
            max_requests: 4,
            max_bytes: 1_000_000,
        };
        let s = validate(
            content.as_bytes(),
            expect(Format::Anthropic, by_count, true),
        )
        .unwrap();
        assert_eq!(
            s.parts.iter().map(|p| p.requests).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        // Duplicates are found across parts.
        let dup = file(10) + &req("r1", "m");
        let v = validate(dup.as_bytes(), expect(Format::Anthropic, by_count, true)).unwrap_err();
        assert_eq!((v.rule, v.line), (Rule::DuplicateCustomId, Some(11)));
    }
}
